"""ViT-S/16 backbone (BGFormer's backbone) through the optional ``timm`` extra: ``pip install pygml[vit]``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import Tensor, nn

from pygml.models import Backbone, load_pretrained


def _create_vit_small() -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ImportError("model.backbone=vit_s16 needs timm: pip install pygml[vit]") from exc
    # any image side works: the patch grid is padded to a multiple of 16 and the position
    # embeddings are interpolated to it
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                             dynamic_img_size=True, dynamic_img_pad=True)


def _load_safetensors(net: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights for timm ViT-S/16 not found at {path}. pygml never downloads weights: "
            f"place the checkpoint file there, or set model.pretrained=null to start from random weights."
        )
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("head.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"weights in {path} do not fit timm ViT-S/16: {exc}") from None


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
            path = Path(pretrained).expanduser()
            if path.suffix == ".safetensors":
                _load_safetensors(self.net, path)
            else:
                load_pretrained(self.net, path, "timm ViT-S/16", ignore_prefixes=("head.",))
        self.net.set_grad_checkpointing(grad_checkpointing)
        self.out_dim = 384

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.preprocess(images))


__all__ = ["ViTSmall16"]
