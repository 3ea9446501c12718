"""Peak memory of one training step of each method at its paper's batch size and image size.

Settings, from the shipped configs ``<method>/<dataset>`` (``pygml/configs``; random weights: memory does not
depend on them):

* Intra-Batch, CUB (P×K = 6×9 = 54) and SOP (15×6 = 90): ResNet-50 at 227², MPN on the full graph;
* ProxyGML, CUB: BN-Inception at 224², 32 images, 100 × 12 proxies (after the warm-up epoch);
* BGFormer, CUB: ResNet-50 at 224², 45×9 = 405 images, two blocks of top-K attention (K = 30); and the same with
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

:func:`step_rows` times the same real step for throughput (images/s, against the baseline) in fp32
and under bf16 autocast, with ``torch.cuda.max_memory_allocated`` on CUDA, for the settings of
``STEP_SETTINGS`` (BGFormer also with the paper's ViT-S/16, random init): the GPU check
(``python -m bench.gpu``) runs it on CUDA, and at a tiny size on the CPU in its dry run.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import row, timeit  # noqa: E402

#: (label, method, dataset config, overrides)
SETTINGS = [
    ("Intra-Batch CUB 6x9 ResNet-50 227", "intra_batch", "cub", []),
    ("Intra-Batch SOP 15x6 ResNet-50 227", "intra_batch", "sop", []),
    ("ProxyGML CUB 32 BN-Inception 224", "proxygml", "cub", []),
    ("BGFormer CUB 45x9 ResNet-50 224", "bgformer", "cub", []),
    ("BGFormer CUB 45x9 ResNet-50 224, grad checkpointing", "bgformer", "cub", ["model.grad_checkpointing=true"]),
]
#: the throughput settings: each method at its paper's batch, and BGFormer with the paper's ViT-S/16 at 224²
STEP_SETTINGS = SETTINGS[:4] + [
    ("BGFormer CUB 45x9 ViT-S/16 224", "bgformer", "cub",
     ["model.backbone=vit_s16", "bgformer.heads=6", "data.image_size=224"]),
]
#: autocast dtype of each precision :func:`step_rows` times (None: full precision)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
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


def _step(method, optimizer, images, labels, amp_dtype: torch.dtype | None = None) -> None:
    """Forward (under autocast to ``amp_dtype`` when given, as the engine's ``train.amp``), backward and
    the optimiser step."""
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        loss, _ = method(images, labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def real_step(cfg, num_classes: int, device: torch.device, amp_dtype: torch.dtype | None = None,
              warmup: int = 0, steps: int = 1) -> tuple[float, int | None]:
    """(seconds per step, peak allocated CUDA bytes or ``None`` off CUDA) of real training steps: the
    median of ``steps`` timed steps after ``warmup`` untimed ones; the peak is taken over the timed steps."""
    from pygml.app.optim import build_optimizer

    cuda = device.type == "cuda"
    method = _method(cfg, num_classes).to(device)
    optimizer = build_optimizer(cfg.optim, method.param_groups())
    images, labels = _batch(cfg, device)
    for _ in range(warmup):
        _step(method, optimizer, images, labels, amp_dtype)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = timeit(lambda: _step(method, optimizer, images, labels, amp_dtype), repeat=steps, warmup=0)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    del method, optimizer, images
    if cuda:
        torch.cuda.empty_cache()
    return seconds, peak


def cuda_peak(cfg, num_classes: int) -> int:
    """Peak allocated CUDA bytes of one real training step."""
    return real_step(cfg, num_classes, torch.device("cuda"))[1]


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


def step_rows(quick: bool = False, device: str = "cuda", settings: list = STEP_SETTINGS,
              precisions: tuple[str, ...] = tuple(PRECISIONS), extra: tuple[str, ...] = ()) -> list[dict]:
    """Throughput (images/s, reference: the baseline method) and, on CUDA, peak allocated memory of a
    real training step of each setting in each precision (``quick``: tiny batches and images;
    ``extra``: overrides added to every setting, e.g. a small backbone for a smoke run of this code)."""
    dev = torch.device(device)
    warmup, steps = (0, 1) if quick else (1, 3)
    rows = []
    for label, method, dataset, overrides in settings:
        if extra:
            overrides = [*overrides, *extra]
            label = f"{label} [{' '.join(extra)}]"
        cfg = _config(method, dataset, overrides, quick)
        base = copy.deepcopy(cfg)
        base.method = "baseline"
        batch = cfg.train.classes_per_batch * cfg.train.samples_per_class
        name = label if not quick else f"{label} (quick: {QUICK_SHAPE[0]}x{QUICK_SHAPE[1]} at {QUICK_SHAPE[2]}²)"
        for precision in precisions:
            amp = PRECISIONS[precision]
            t, peak = real_step(cfg, TRAIN_CLASSES[dataset], dev, amp, warmup, steps)
            t_ref, peak_ref = real_step(base, TRAIN_CLASSES[dataset], dev, amp, warmup, steps)
            where = f"{precision}, {dev.type}"
            rows.append(row(f"{name}, {where}: images/s", batch / t, batch / t_ref, None, unit="img/s",
                            reference_name="baseline, same backbone and batch"))
            if peak is not None:
                rows.append(row(f"{name}, {where}: peak memory", float(peak), float(peak_ref), None, unit="B",
                                reference_name="baseline; torch.cuda.max_memory_allocated"))
            print(f"{name}, {where}: {batch / t:.1f} images/s (baseline {batch / t_ref:.1f})", file=sys.stderr,
                  flush=True)
    return rows


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
