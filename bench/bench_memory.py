"""Peak memory of one training step of each method at its paper's batch size and image size.

Settings, from the shipped configs ``<method>/<dataset>`` (``pygml/configs``; random weights: memory does not
depend on them):

* Intra-Batch, CUB (P×K = 6×9 = 54) and SOP (15×6 = 90): ResNet-50 at 227², MPN on the full graph;
* ProxyGML, CUB: BN-Inception at 224², 32 images, 100 × 12 proxies (after the warm-up epoch);
* BGFormer, CUB: ResNet-50 at 227², 45×9 = 405 images, kNN graph K = 30; and the same with
  ``model.grad_checkpointing=true``.

A step is forward, backward and the optimiser step of the config's optimiser. The reference of each row
is the baseline method (the same backbone, batch and optimiser; normalized softmax instead of the graph
part): the ratio is what the method's graph part costs in memory.

* **On CUDA** the step runs for real and the figure is ``torch.cuda.max_memory_allocated`` (the bytes of
  live tensors at the peak, as the caching allocator counts them; the CUDA context and cuDNN's
  workspaces are not in it).
* **Without a GPU** the figure is an estimate of the same quantity, in two parts that are added:
  the backbone's step under ``FakeTensorMode`` (tensors with shapes and no data, so a 405-image
  ResNet-50 step costs nothing to trace), with torch's ``MemTracker`` taking the peak of live tensor
  storage; and the rest of the method (embedding head, batch graph, graph layers, losses and their
  optimiser state) run for real on the CPU on backbone features of the right shape, under the same
  tracker, minus the features themselves (counted in the first part). The sum over-counts a little:
  the two peaks do not fall at the same moment. Frozen BatchNorm parameters take a gradient in the
  estimate (the tracker hooks every parameter): under 1 MiB. CPU kernels may keep different intermediates from
  cuDNN's; the rows say which way each figure was taken.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import row  # noqa: E402

#: (label, method, dataset config, overrides)
SETTINGS = [
    ("Intra-Batch CUB 6x9 ResNet-50 227", "intra_batch", "cub", []),
    ("Intra-Batch SOP 15x6 ResNet-50 227", "intra_batch", "sop", []),
    ("ProxyGML CUB 32 BN-Inception 224", "proxygml", "cub", []),
    ("BGFormer CUB 45x9 ResNet-50 227", "bgformer", "cub", []),
    ("BGFormer CUB 45x9 ResNet-50 227, grad checkpointing", "bgformer", "cub", ["model.grad_checkpointing=true"]),
]
#: training classes of each dataset (the classifier and proxy sizes depend on them)
TRAIN_CLASSES = {"cub": 100, "cars": 98, "sop": 11318, "inshop": 3997}
#: quick run: the same settings at 2 images per class and 64² images
QUICK_SHAPE = (2, 2, 64)


def _config(method: str, dataset: str, overrides: list[str], quick: bool):
    from pygml.app.config import load_config

    extra = ["model.pretrained=null", "train.device=cpu"]
    if quick:
        p, k, size = QUICK_SHAPE
        extra += [f"train.classes_per_batch={p}", f"train.samples_per_class={k}", f"data.image_size={size}"]
    return load_config(f"{method}/{dataset}", overrides + extra)


def _batch(cfg, device):
    p, k = cfg.train.classes_per_batch, cfg.train.samples_per_class
    images = torch.randn(p * k, 3, cfg.data.image_size, cfg.data.image_size, device=device)
    labels = torch.arange(p, device=device).repeat_interleave(k)
    return images, labels


def _method(cfg, num_classes: int):
    from pygml.app.builders import build_method

    method = build_method(cfg, num_classes)
    method.set_epoch(getattr(method, "warmup_epochs", 0))  # ProxyGML: past the warm-up, all trained
    return method.train()


def _step(method, optimizer, images, labels) -> None:
    loss, _ = method(images, labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def cuda_peak(cfg, num_classes: int) -> int:
    """Peak allocated CUDA bytes of one real training step."""
    from pygml.app.optim import build_optimizer

    device = torch.device("cuda")
    method = _method(cfg, num_classes).to(device)
    optimizer = build_optimizer(cfg.optim, method.param_groups())
    images, labels = _batch(cfg, device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    _step(method, optimizer, images, labels)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del method, optimizer, images
    torch.cuda.empty_cache()
    return peak


def _tracked_peak(fn, module, *tracked) -> int:
    """Peak bytes of live tensor storage while ``fn()`` runs, as torch's ``MemTracker`` counts them.

    The tracker hooks the gradient of every parameter, so frozen parameters (BatchNorm under
    ``model.frozen_bn``) are made to take one here: under 1 MiB for ResNet-50 or BN-Inception, and they
    stay out of the optimiser."""
    from torch.distributed._tools.mem_tracker import MemTracker

    for param in module.parameters():
        param.requires_grad_(True)
    tracker = MemTracker()
    tracker.track_external(module, *tracked)
    with tracker:
        fn()
    return sum(snap["Total"] for snap in tracker.get_tracker_snapshot("peak").values())


def backbone_peak(cfg, fake: bool = True) -> tuple[int, int]:
    """(peak tensor bytes of the backbone's training step, bytes of its output): under FakeTensorMode
    (no data, no arithmetic), or for real on the CPU with ``fake=False`` (to check the two agree)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pygml.app.builders import build_backbone
    from pygml.app.optim import build_optimizer

    with FakeTensorMode() if fake else contextlib.nullcontext():
        backbone = build_backbone(cfg.model).train()
        params = [p for p in backbone.parameters() if p.requires_grad]
        optimizer = build_optimizer(cfg.optim, [{"name": "backbone", "params": params}])
        images, _ = _batch(cfg, torch.device("cpu"))
        out = {}

        def step():
            features = backbone(images)
            out["bytes"] = features.numel() * features.element_size()
            features.sum().backward()  # the gradient the rest of the method sends back has this shape
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        peak = _tracked_peak(step, backbone, optimizer, images)
    return peak, out["bytes"]


def head_peak(cfg, num_classes: int) -> int:
    """Peak tensor bytes of everything after the backbone, run for real on the CPU, minus its input."""
    from pygml.app.optim import build_optimizer

    method = _method(cfg, num_classes)
    out_dim = method.backbone.out_dim
    method.backbone = torch.nn.Identity()  # the method now takes backbone features as its "images"
    groups = [g for g in method.param_groups() if g["name"] != "backbone"]
    optimizer = build_optimizer(cfg.optim, groups)
    p, k = cfg.train.classes_per_batch, cfg.train.samples_per_class
    features = torch.randn(p * k, out_dim, requires_grad=True)
    labels = torch.arange(p).repeat_interleave(k)
    peak = _tracked_peak(lambda: _step(method, optimizer, features, labels), method, optimizer, features)
    return peak - features.numel() * features.element_size()


def estimated_peak(cfg, num_classes: int) -> int:
    bb, _ = backbone_peak(cfg)
    return bb + head_peak(cfg, num_classes)


def run(quick: bool = False, settings: list = SETTINGS) -> list[dict]:
    cuda = torch.cuda.is_available()
    how = "CUDA max_memory_allocated" if cuda else "estimate: FakeTensor backbone + CPU head"
    rows = []
    for label, method, dataset, overrides in settings:
        cfg = _config(method, dataset, overrides, quick)
        base = copy.deepcopy(cfg)
        base.method = "baseline"
        classes = TRAIN_CLASSES[dataset]
        measure = cuda_peak if cuda else estimated_peak
        ours, ref = measure(cfg, classes), measure(base, classes)
        name = label if not quick else f"{label} (quick: {QUICK_SHAPE[0]}x{QUICK_SHAPE[1]} at {QUICK_SHAPE[2]}²)"
        rows.append(row(f"{name}: peak memory", float(ours), float(ref), None, unit="B",
                        reference_name=f"baseline, same backbone and batch; {how}"))
        print(f"{name}: {ours / 2**30:.2f} GiB (baseline {ref / 2**30:.2f} GiB)", file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    from bench.common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
