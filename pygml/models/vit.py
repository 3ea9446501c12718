"""ViT-S/16 backbone (BGFormer's backbone) through the optional ``timm`` extra: ``pip install pygml[vit]``."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from pygml.models.backbones import Backbone
from pygml.models.weights import load_weights


def _create_vit_small() -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ImportError("the ViT-S/16 backbone needs timm: pip install 'pygml[vit]'") from exc
    # any image side works: the patch grid is padded to a multiple of 16 and the position
    # embeddings are interpolated to it
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                             dynamic_img_size=True, dynamic_img_pad=True)


class ViTSmall16(Backbone):
    """timm ``vit_small_patch16_224`` without its classifier: the CLS token after the final norm, 384-d.

    Images in [0, 1] are normalised with the ImageNet mean/std inside. ``pretrained`` is a local
    file: a torch checkpoint (``.pth``/``.pt``, e.g. DINO's ``dino_deitsmall16_pretrain.pth`` or a
    timm state dict) or timm's ``.safetensors``; a classifier ``head.*`` in it is ignored.

    Shapes: images (B, 3, H, W) → (B, 384).
    """

    def __init__(self, pretrained: Optional[str] = None, grad_checkpointing: bool = False) -> None:
        super().__init__(grad_checkpointing=grad_checkpointing)
        self.net = _create_vit_small()
        if pretrained:
            load_weights(self.net, pretrained, "timm ViT-S/16", ignore_prefixes=("head.",))
        self.net.set_grad_checkpointing(grad_checkpointing)
        self.out_dim = 384

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.preprocess(images))


__all__ = ["ViTSmall16"]
