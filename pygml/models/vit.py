"""ViT-S/16 backbone (BGFormer's backbone) through the optional ``timm`` extra: ``pip install pygml[vit]``."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from pygml.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone
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


#: input normalisations of :class:`ViTSmall16`: (mean, std)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


class ViTSmall16(Backbone):
    """timm ``vit_small_patch16_224`` without its classifier: the CLS token after the final norm, 384-d.

    Images in [0, 1] are normalised inside: ``normalization="imagenet"`` (the ImageNet mean/std, as DINO's
    weights expect) or ``"half"`` (mean = std = 0.5, as timm's ``vit_small_patch16_224`` weights and the
    BGFormer authors' release). ``pretrained`` is a local
    file: a torch checkpoint (``.pth``/``.pt``, e.g. DINO's ``dino_deitsmall16_pretrain.pth`` or a
    timm state dict) or timm's ``.safetensors``; a classifier ``head.*`` in it is ignored.

    Shapes: images (B, 3, H, W) → (B, 384).
    """

    def __init__(self, pretrained: Optional[str] = None, grad_checkpointing: bool = False,
                 normalization: str = "imagenet") -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        mean, std = NORMALIZATIONS[normalization]
        super().__init__(mean=mean, std=std, grad_checkpointing=grad_checkpointing)
        self.normalization = normalization
        self.net = _create_vit_small()
        if pretrained:
            load_weights(self.net, pretrained, "timm ViT-S/16", ignore_prefixes=("head.",))
        self.net.set_grad_checkpointing(grad_checkpointing)
        self.out_dim = 384

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.preprocess(images))


__all__ = ["ViTSmall16"]
