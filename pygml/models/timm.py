"""Any model of timm as a backbone, by name, with the preprocessing timm declares for it (optional extra:
``pip install 'pygml[timm]'``)."""

from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor

from pygml.models.backbones import Backbone
from pygml.models.weights import load_weights

#: timm's interpolation names → ``torch.nn.functional.interpolate`` modes
RESIZE_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


def _timm() -> Any:
    try:
        import timm
        import timm.data
    except ImportError as exc:
        raise ImportError("timm backbones (model.backbone=timm:<name>) need timm: pip install 'pygml[timm]'") from exc
    return timm


class TimmBackbone(Backbone):
    """``timm.create_model(name, pretrained=False, num_classes=0)``: the model's pooled features, its
    classifier removed.

    The preprocessing is the one timm declares for the model (``timm.data.resolve_data_config``), applied
    inside like every pygml backbone: images in [0, 1] are resized to the declared input size (with the
    declared interpolation, antialiased) when they have another size, then normalised with the declared
    mean and std. ``data_config`` keeps what timm declared (``crop_pct`` included, for the data pipeline:
    ``resize_size = image_size / crop_pct`` reproduces timm's evaluation crop).

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``resnet50``, ``convnext_tiny``,
            ``vit_small_patch16_224``.
        pretrained: a local weights file (never downloaded), read by :func:`pygml.models.load_weights`:
            a state dict of the timm model (``.pth``, ``.pt``, ``.bin`` or ``.safetensors``); its
            classifier is ignored.
        grad_checkpointing: recompute activations in the backward pass (models that support it).
        input_size: the side images are resized to; ``None`` = the declared input size, ``0`` = no
            resizing (for models that take any size).

    Shapes: images (B, 3, H, W) → (B, ``out_dim``).
    """

    def __init__(self, name: str, pretrained: Optional[str] = None, *, grad_checkpointing: bool = False,
                 input_size: Optional[int] = None) -> None:
        timm = _timm()
        if input_size is not None and input_size < 0:
            raise ValueError(f"input_size must be a positive side, 0 (no resizing) or None (timm's), got {input_size}")
        try:
            net = timm.create_model(name, pretrained=False, num_classes=0)
        except RuntimeError as err:
            if "Unknown model" not in str(err):
                raise
            close = timm.list_models(f"*{name}*")[:5]
            hint = f"; similar names: {', '.join(close)}" if close else ""
            raise ValueError(f"name {name!r} is not a timm model{hint} (timm.list_models() lists them all)") from None
        config = timm.data.resolve_data_config({}, model=net)
        super().__init__(mean=tuple(config["mean"]), std=tuple(config["std"]), grad_checkpointing=grad_checkpointing)
        if pretrained:
            classifier = net.pretrained_cfg.get("classifier") or ()
            heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
            load_weights(net, pretrained, f"timm {name}", ignore_prefixes=tuple(f"{h}." for h in heads))
        if grad_checkpointing:
            try:
                net.set_grad_checkpointing(True)
            except (AssertionError, NotImplementedError, AttributeError):
                raise ValueError(f"grad_checkpointing: timm model {name} does not support it") from None
        self.net = net
        self.name = name
        self.data_config = dict(config)
        side = config["input_size"][1:]
        self.input_size: Optional[tuple[int, int]] = (
            (int(side[0]), int(side[1])) if input_size is None else (input_size, input_size) if input_size else None)
        self.resize_mode = RESIZE_MODES.get(config.get("interpolation", "bilinear"), "bilinear")
        self.out_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)

    def preprocess(self, images: Tensor) -> Tensor:
        if self.input_size is not None and images.dim() == 4 and tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode=self.resize_mode,
                                   align_corners=None if self.resize_mode == "nearest" else False,
                                   antialias=self.resize_mode != "nearest")
        return super().preprocess(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.preprocess(images))

    def describe(self) -> str:
        """One line: the preprocessing timm declared and what the backbone does with it."""
        c = self.data_config
        size = "images kept at their own size" if self.input_size is None else \
            f"images resized to {self.input_size[0]}×{self.input_size[1]} ({self.resize_mode})"
        return (f"timm:{self.name}: {size}, mean {tuple(round(m, 3) for m in c['mean'])}, std "
                f"{tuple(round(s, 3) for s in c['std'])}, {self.out_dim}-d features; timm evaluates it at "
                f"{c['input_size'][1]}×{c['input_size'][2]} with crop_pct {c.get('crop_pct')}")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, out_dim={self.out_dim}"


__all__ = ["RESIZE_MODES", "TimmBackbone"]
