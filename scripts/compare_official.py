#!/usr/bin/env python
"""Compare pygml's losses and modules with the official code, side by side, on the same inputs and weights.

Give the paths of checkouts of the official repositories (nothing of them is copied into pygml):

    python scripts/compare_official.py --proxygml ~/src/ProxyGML --intra-batch ~/src/intra_batch \\
        --bgformer ~/src/DyBGR

* ``--proxygml``: YuehuaZhu/ProxyGML. Its ``loss/ProxyGML.py`` against :class:`pygml.losses.ProxyGMLLoss`.
* ``--intra-batch``: dvl-tum/intra_batch. Its ``GNNReID`` (MPN, BatchNorm neck, classifier) and
  ``CrossEntropyLabelSmooth`` against pygml's Intra-Batch method with the weights copied, both losses
  and every gradient; its ``RAdam.py`` against ``torch.optim.RAdam``.
* ``--bgformer``: SissiW/DyBGR, the BGFormer authors' later release. The ``contrastive_loss`` of its
  ``train.py`` (read from the file; the rest of ``train.py`` needs apex and is not run), summed over the
  ordered pairs of views as its training loop does, against :class:`pygml.losses.PairwiseInfoNCELoss`.

Needs, besides pygml's own requirements, ``torch_scatter`` (the Intra-Batch code imports it) and PyYAML.
Everything runs on the CPU in float32: the ``.cuda()`` calls of the BGFormer release's loss (which moves
two constant tensors) are made no-ops while it runs, the Intra-Batch loss is built with ``use_gpu=False``
and the ProxyGML loss with ``device="cpu"``; nothing else of the official code is changed. Training-mode comparisons set
every dropout probability to 0 on both sides (the two sides draw different masks).

Prints a Markdown table: what was compared, max |Δ| of the values and of the gradients (every input and
parameter gradient), and the largest magnitude of the values for scale.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib.util
import math
import sys
import types
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NAN = float("nan")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ------------------------------------------------------------------------------------------------------
# Adapters: the pygml side of each comparison. pygml's API moves; adapt these functions, nothing below.
# ------------------------------------------------------------------------------------------------------


def pygml_proxygml_loss(num_classes: int, dim: int, n: int, r: float, lam: float, **switches) -> nn.Module:
    """A ProxyGML loss whose ``terms(x, y)`` gives ``loss`` and ``loss_cls``; its proxies are ``.proxies``
    (C·N, d)."""
    from pygml.losses import ProxyGMLLoss

    return ProxyGMLLoss(num_classes, dim, n, r, lam, **switches)


class _Features(nn.Identity):
    """A stand-in backbone: the features f themselves."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim


def pygml_intra_batch(num_classes: int, dim: int, layers: int, heads: int, temperature: float,
                      concat: bool) -> nn.Module:
    """pygml's Intra-Batch method on features f (backbone and embedding layer replaced by identities), with
    every dropout at 0."""
    from pygml.methods import IntraBatch

    model = IntraBatch(_Features(dim), num_classes, embedding_dim=dim, temperature=temperature, label_smoothing=0.1,
                       layers=layers, heads=heads, dropout=0.0, concat=concat)
    model.head = nn.Identity()
    return model


def pygml_intra_batch_losses(model: nn.Module, f: Tensor, y: Tensor) -> dict[str, Tensor]:
    """``loss`` (backbone + MPN, with its graph), ``loss_backbone``, ``loss_mpn`` and the MPN's class logits."""
    from pygml.models import l2n

    loss, logs = model(f, y)
    with torch.no_grad():  # on copies: a second call must not move the neck's running statistics again
        logits = copy.deepcopy(model.graph_loss).logits(copy.deepcopy(model.graph)(l2n(f.detach()), y))
    return {"loss": loss, "loss_backbone": logs["loss_backbone"], "loss_mpn": logs["loss_graph"],
            "mpn_logits": logits}


def pygml_intra_batch_parameters(model: nn.Module, layers: int) -> dict[str, str]:
    """pygml parameter / buffer name → official name (``fc.*`` is the backbone classifier, ``gnn.*`` the
    official ``GNNReID``)."""
    names = {"loss.classifier.weight": "fc.weight", "loss.classifier.bias": "fc.bias",
             "graph.mpn.lin_in.weight": "gnn.dim_red.weight", "graph.mpn.lin_in.bias": "gnn.dim_red.bias",
             "graph_loss.classifier.weight": "gnn.fc.0.weight"}
    for t in ("weight", "bias", "running_mean", "running_var"):
        names[f"graph_loss.neck.{t}"] = f"gnn.bottleneck.0.{t}"
    pairs = {"attn.lin_query": "att.q_linear", "attn.lin_key": "att.k_linear", "attn.lin_value": "att.v_linear",
             "attn.lin_out": "att.out", "lin1": "linear1", "lin2": "linear2", "norm1": "norm1", "norm2": "norm2"}
    for layer in range(layers):
        for ours, theirs in pairs.items():
            for t in ("weight", "bias"):
                names[f"graph.mpn.layers.{layer}.{ours}.{t}"] = \
                    f"gnn.gnn_model.node_model.layers.{layer}.{theirs}.{t}"
    return names


def pygml_infonce(temperature: float, views: int | None) -> nn.Module:
    from pygml.losses.infonce import PairwiseInfoNCELoss

    return PairwiseInfoNCELoss(temperature, views=views)


# ------------------------------------------------------------------------------------------------------
# Loading the official code from the given checkouts
# ------------------------------------------------------------------------------------------------------


def load_file(name: str, path: Path) -> types.ModuleType:
    if not path.is_file():
        raise SystemExit(f"{path} not found: give the root of a checkout of the official repository")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_package_module(package: str, folder: Path, module: str) -> types.ModuleType:
    """``folder`` as package ``package`` without running its ``__init__.py``, then ``package.module``."""
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(folder)]
    sys.modules[package] = pkg
    return importlib.import_module(f"{package}.{module}")


def load_function(path: Path, name: str, namespace: dict) -> Callable:
    """One top-level function of a script, compiled from its source without running the script."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not nodes:
        raise SystemExit(f"{path} has no function {name}")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


@contextlib.contextmanager
def cuda_calls_stay_on_cpu() -> Iterator[None]:
    """Make ``Tensor.cuda()`` return the tensor itself while official code runs (everything runs on the CPU)."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


# ------------------------------------------------------------------------------------------------------
# Comparisons
# ------------------------------------------------------------------------------------------------------

Row = tuple[str, str, float, float, float, float]


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def grad_diff(pairs: list[tuple[Tensor, Tensor]]) -> tuple[float, float]:
    """Max |Δ| over the gradients of every (official, pygml) pair, and the largest gradient entry."""
    return (max(max_diff(a.grad, b.grad) for a, b in pairs),
            max(float(a.grad.detach().abs().max()) for a, _ in pairs))


def compare_proxygml(root: Path, gen: torch.Generator) -> list[Row]:
    official = load_file("official_proxygml_loss", root / "loss" / "ProxyGML.py").ProxyGML
    settings = [  # name, C, N, r, λ, pygml switches
        ("CUB (C 100, N 12, r 0.05, λ 0.3)", 100, 12, 0.05, 0.3, {}),
        ("Cars (C 98, N 12, r 0.05, λ 0.3)", 98, 12, 0.05, 0.3, {}),
        ("SOP (C 11318, N 1, r 0.05, λ 0)", 11318, 1, 0.05, 0.0, {}),
        ("C 10, N 5, r 0.2, λ 0.3", 10, 5, 0.2, 0.3, {}),
        ("C 10, N 5, r 0.2, λ 0.3, chunked L_p (7 rows)", 10, 5, 0.2, 0.3,
         {"regularizer": "chunked", "chunk_size": 7}),
        ("C 10, N 5, λ 0.3 vs use_reg=false at λ 0", 10, 5, 0.2, 0.3, {"use_reg": False}),
        ("r 1 (every proxy) vs subgraph=false", 20, 3, 1.0, 0.3, {"subgraph": False}),
    ]
    rows = []
    for name, c, n, r, lam, switches in settings:
        dim, batch = 512, 32
        opt = SimpleNamespace(dim=dim, C=c, N=n, r=r, weight_lambda=lam, device="cpu", dataset="-",
                              centerlr=0.03, rate=0.1, new_epoch_to_decay=[20, 40])
        if switches.get("use_reg") is False:
            opt.weight_lambda = 0.0
        with contextlib.redirect_stdout(None):
            theirs = official(opt)
        ours = pygml_proxygml_loss(c, dim, n, r, lam, **switches)
        with torch.no_grad():
            ours.proxies.copy_(theirs.Proxies.t())
        u = torch.randn(batch, dim, generator=gen)
        y = torch.randint(0, c, (batch,), generator=gen)
        u1, u2 = u.clone().requires_grad_(True), u.clone().requires_grad_(True)
        loss_t, cls_t = theirs(F.normalize(u1, dim=1), y)  # the official net ends in an L2 normalisation
        if opt.weight_lambda == 0:  # then its second output is 0, not L_cls
            cls_t = loss_t
        terms = ours.terms(u2, y)
        loss_t.backward()
        terms["loss"].backward()
        grads = grad_diff([(u1, u2), (theirs.Proxies, SimpleNamespace(grad=ours.proxies.grad.t()))])
        rows.append(("ProxyGML loss", name, max(max_diff(loss_t, terms["loss"]), max_diff(cls_t, terms["loss_cls"])),
                     *grads, float(loss_t.detach().abs())))
    return rows


def compare_intra_batch(root: Path, gen: torch.Generator) -> list[Row]:
    import yaml

    gnn_base = load_package_module("official_intra_batch_net", root / "net", "gnn_base")
    smooth_ce = load_file("official_intra_batch_losses", root / "utils" / "losses.py").CrossEntropyLabelSmooth
    rows = []
    for dataset in ("cub", "cars", "sop", "inshop"):
        config = yaml.safe_load((root / "config" / f"config_{dataset}_train.yaml").read_text())
        params = copy.deepcopy(config["models"]["gnn_params"])
        train = config["train_params"]
        gnn = params["gnn"]
        for key in ("dropout_1", "dropout_2", "dropout_mlp"):
            gnn[key] = 0.0
        num_classes, layers, heads = config["dataset"]["num_classes"], gnn["num_layers"], gnn["num_heads"]
        temperature, dim = train["temperatur"], 512
        batch = train["num_classes_iter"] * train["num_elements_class"]
        with contextlib.redirect_stdout(None):
            official_gnn = gnn_base.GNNReID(torch.device("cpu"), params, dim)
        for layer in official_gnn.gnn_model.node_model.layers:
            layer.att.dropout.p = 0.0
        official = nn.ModuleDict({"fc": nn.Linear(dim, num_classes), "gnn": official_gnn})
        with torch.no_grad():  # a neck that is not the identity, so eval mode tests its statistics
            neck = official_gnn.bottleneck[0]
            neck.weight.uniform_(0.5, 1.5, generator=gen)
            neck.running_mean.normal_(0, 0.05, generator=gen)
            neck.running_var.uniform_(0.5, 1.5, generator=gen)
        ours = pygml_intra_batch(num_classes, dim, layers, heads, temperature, bool(params["cat"]))
        names = pygml_intra_batch_parameters(ours, layers)
        own, theirs_state = ours.state_dict(), official.state_dict()
        missing = [k for k in own if k not in names and not k.endswith("num_batches_tracked")]
        if missing:
            raise SystemExit(f"pygml parameters without an official counterpart: {missing}")
        ours.load_state_dict({k: theirs_state[names[k]] if k in names else v for k, v in own.items()})
        ce_official = smooth_ce(num_classes=num_classes, use_gpu=False)
        classes = torch.randperm(num_classes, generator=gen)[:train["num_classes_iter"]]
        y = classes.repeat_interleave(train["num_elements_class"])
        f = torch.randn(batch, dim, generator=gen)
        # the official graph: every ordered pair (r, c) with self loops, as GraphGenerator builds it
        edge_index = torch.nonzero(torch.ones(batch, batch))
        for mode in ("train", "eval"):
            official.train(mode == "train")
            ours.train(mode == "train")
            official.zero_grad()
            ours.zero_grad()
            f1, f2 = f.clone().requires_grad_(True), f.clone().requires_grad_(True)
            fc7 = F.normalize(f1, dim=1)
            pred, _ = official_gnn(fc7, edge_index, None, "plain")
            loss_backbone = ce_official(official["fc"](f1) / temperature, y)
            loss_mpn = ce_official(pred[-1] / temperature, y)
            (loss_backbone + loss_mpn).backward()
            got = pygml_intra_batch_losses(ours, f2, y)
            got["loss"].backward()
            pairs = [(f1, f2)]
            named = dict(ours.named_parameters())
            official_params = dict(official.named_parameters())
            pairs += [(official_params[names[k]], p) for k, p in named.items() if p.requires_grad]
            what = (f"{dataset.upper() if dataset != 'inshop' else 'In-Shop'} ({layers} layer(s), {heads} heads, "
                    f"T {temperature:.4g}, B {batch}{', concat' if params['cat'] else ''}), {mode}")
            scale = max(float(loss_backbone.detach().abs()), float(loss_mpn.detach().abs()))
            values = max(max_diff(loss_backbone, got["loss_backbone"]), max_diff(loss_mpn, got["loss_mpn"]))
            rows.append(("Intra-Batch MPN + 2 LS-CE", what, values, *grad_diff(pairs), scale))
            rows.append(("Intra-Batch MPN logits", what, max_diff(pred[-1], got["mpn_logits"]), NAN, NAN,
                         float(pred[-1].detach().abs().max())))
    rows.extend(compare_radam(root, gen))
    return rows


def compare_radam(root: Path, gen: torch.Generator) -> list[Row]:
    official = load_file("official_intra_batch_radam", root / "RAdam.py").RAdam
    rows = []
    for name, lr, wd in (("CUB lr 1.5637e-4, wd 6.06e-6", 1.5637e-4, 6.06e-6), ("lr 1e-3, wd 0.1", 1e-3, 0.1)):
        for decoupled in (True, False):
            start = torch.randn(1000, generator=gen)
            grads = torch.randn(300, 1000, generator=gen)
            a, b = nn.Parameter(start.clone()), nn.Parameter(start.clone())
            opt_a = official([a], lr=lr, weight_decay=wd)
            opt_b = torch.optim.RAdam([b], lr=lr, weight_decay=wd, decoupled_weight_decay=decoupled)
            for step, g in enumerate(grads):
                if step == 150:  # the lr drop to lr0/10, as at epochs 31 and 51
                    for o in (opt_a, opt_b):
                        o.param_groups[0]["lr"] = lr / 10
                a.grad, b.grad = g.clone(), g.clone()
                with warnings.catch_warnings():  # its deprecated Tensor.add_(Number, Tensor) calls
                    warnings.simplefilter("ignore")
                    opt_a.step()
                opt_b.step()
            rows.append(("RAdam, 300 steps (params)",
                         f"{name}: torch RAdam(decoupled_weight_decay={decoupled})",
                         max_diff(a, b), NAN, NAN, float((a - start).detach().abs().max())))
    return rows


def compare_infonce(root: Path, gen: torch.Generator) -> list[Row]:
    namespace = {"torch": torch, "F": F}
    try:
        namespace["dist_matrix"] = load_file("official_hyptorch_pmath", root / "hyptorch" / "pmath.py").dist_matrix
    except ImportError:  # only the hyperbolic distance needs it, and pygml's loss is the cosine one
        namespace["dist_matrix"] = None
    official = load_function(root / "train.py", "contrastive_loss", namespace)
    rows = []
    for classes, views, dim in ((45, 9, 128), (10, 4, 384), (3, 2, 16), (1, 3, 8)):
        u = torch.randn(classes * views, dim, generator=gen)  # rows of a class together, as the sampler gives them
        y = torch.arange(classes).repeat_interleave(views)
        u1 = u.clone().requires_grad_(True)
        z = F.normalize(u1, dim=1).view(classes, views, dim)  # the release's head ends in an L2 normalisation
        loss_t = 0.0
        with cuda_calls_stay_on_cpu():
            for i in range(views):
                for j in range(views):
                    if i != j:
                        loss_t = loss_t + official(z[:, i], z[:, j], 0.2, 0)[0]
        loss_t.backward()
        # pygml: labels read, labels given by views=m, and the rows interleaved (each class in order)
        perm = torch.randperm(len(y), generator=gen)
        for c in range(classes):
            perm[(y[perm] == c).nonzero().flatten()] = (y == c).nonzero().flatten()
        for label, loss, order in (("views read", pygml_infonce(0.2, None), torch.arange(len(y))),
                                   ("views=m", pygml_infonce(0.2, views), torch.arange(len(y))),
                                   ("rows interleaved", pygml_infonce(0.2, views), perm)):
            u2 = u[order].clone().requires_grad_(True)
            value = loss(u2, y[order])
            value.backward()
            grad = torch.empty_like(u2.grad)
            grad[order] = u2.grad
            rows.append(("Pairwise InfoNCE (τ 0.2, cosine)", f"{classes} classes × {views} views, d {dim}: {label}",
                         max_diff(loss_t, value), *grad_diff([(u1, SimpleNamespace(grad=grad))]),
                         float(loss_t.detach())))
    return rows


def compare_checkpoint_batchnorm(gen: torch.Generator) -> list[Row]:
    """BatchNorm running statistics after one training step inside ``torch.utils.checkpoint``."""
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(8, 4, 6, 6, generator=gen) * 3 + 1
    rows = []
    reference = {}
    for momentum in (0.1, 0.19):
        bn = nn.BatchNorm2d(4, momentum=momentum)
        bn(x.clone().requires_grad_(True)).sum().backward()
        reference[momentum] = bn.running_mean.clone()
    for reentrant in (True, False):
        bn = nn.BatchNorm2d(4)
        layer = nn.Sequential(nn.Conv2d(4, 4, 1), bn)
        with torch.no_grad():
            layer[0].weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            layer[0].bias.zero_()
        checkpoint(layer, x.clone().requires_grad_(True), use_reentrant=reentrant).sum().backward()
        for momentum, expected in reference.items():
            rows.append(("BatchNorm running mean, 1 step", f"checkpoint(use_reentrant={reentrant}) vs plain, "
                         f"momentum {momentum}", max_diff(bn.running_mean, expected), NAN, NAN,
                         float(expected.abs().max())))
    return rows


def format_rows(rows: list[Row]) -> str:
    def num(v: float) -> str:
        return "–" if math.isnan(v) else f"{v:.2e}"

    lines = ["| compared | setting | max abs Δ values | max abs Δ gradients | largest gradient | largest value |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {num(c)} | {num(d)} | {num(e)} | {num(f)} |" for a, b, c, d, e, f in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxygml", type=Path, help="checkout of YuehuaZhu/ProxyGML")
    parser.add_argument("--intra-batch", type=Path, help="checkout of dvl-tum/intra_batch")
    parser.add_argument("--bgformer", type=Path, help="checkout of SissiW/DyBGR (the BGFormer authors' release)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.proxygml or args.intra_batch or args.bgformer):
        parser.error("give at least one of --proxygml, --intra-batch, --bgformer")
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(args.seed)
    rows: list[Row] = []
    if args.proxygml:
        rows += compare_proxygml(args.proxygml.expanduser(), gen)
    if args.intra_batch:
        rows += compare_intra_batch(args.intra_batch.expanduser(), gen)
    if args.bgformer:
        rows += compare_infonce(args.bgformer.expanduser(), gen)
    rows += compare_checkpoint_batchnorm(gen)
    print(f"torch {torch.__version__}, float32 on CPU, seed {args.seed}\n")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
