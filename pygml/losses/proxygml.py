r"""ProxyGML loss: proxy subgraphs and reverse label propagation.

Zhu et al., "Fewer is More: A Deep Graph Metric Learning Perspective Using Fewer Proxies", NeurIPS 2020.
Notation: B samples of C classes, N proxies per class, d channels; proxy j has class ⌊j/N⌋.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pygml.graph import select_proxies
from pygml.losses.base import check_embeddings_labels

REGULARIZERS = ("full", "chunked", "batch")
#: logits of one chunk of the ``chunked`` regulariser when ``chunk_size`` is not given (64 MiB in float32)
CHUNK_ELEMENTS = 2**24
#: smallest norm divided by (as in ``F.normalize``)
NORM_EPS = 1e-12


def _proxy_class_ce_sum(rows: Tensor, rows_inv_norm: Tensor, class_sums: Tensor, column_scale: Optional[Tensor],
                        targets: Tensor) -> Tensor:
    """Σ_j CE(p̂_j · Qᵀ, targets_j), the summed L_p terms of some proxies: ``rows`` (m, d) unnormalised with
    their inverse norms (m,); Q = ``class_sums`` (C, d), or, when ``column_scale`` (C,) is given,
    ``class_sums · diag(column_scale)`` (the proxies themselves when N = 1, not copied normalised)."""
    logits = (rows * rows_inv_norm.unsqueeze(1)) @ class_sums.t()
    if column_scale is not None:
        logits = logits * column_scale
    return F.cross_entropy(logits, targets, reduction="sum")


class ProxyGMLLoss(nn.Module):
    r"""The ProxyGML loss, called as ``loss(embeddings, labels)``; it owns the C·N proxies.

    With :math:`x_i` and :math:`p_j` L2-normalised, :math:`S = X P^\top` (B × CN). Each sample keeps
    :math:`k = \lceil r C N \rceil` proxies: its own class's N proxies and the most similar others
    (:func:`pygml.graph.select_proxies`), giving the sparse subgraph :math:`W = \mathrm{mask} \odot S`.
    Reverse label propagation sums the kept similarities per class,

    .. math:: Z = W Y_p, \qquad Z_{ic} = \sum_{j \text{ kept by } i,\ \lfloor j/N\rfloor = c} S_{ij},

    computed as a scatter-add of the B·k kept edges into (B, C), never as a dense product. The
    softmax runs over the classes with at least one kept proxy (:math:`M_{ic}`), as a log-softmax with
    the other classes at :math:`-\infty`:

    .. math::
        P_{ic} = \frac{M_{ic} e^{Z_{ic}}}{\sum_{c'} M_{ic'} e^{Z_{ic'}}}, \qquad
        L_{cls} = -\frac{1}{B} \sum_i \log P_{i y_i}.

    The proxy regulariser classifies each proxy by its summed similarity to every class's proxies,

    .. math:: L_p = \frac{1}{CN} \sum_j \mathrm{CE}\big(((P P^\top) Y_p)_j,\ \lfloor j/N\rfloor\big),
              \qquad L = L_{cls} + \lambda L_p,

    evaluated as :math:`P (Y_p^\top P)^\top`: the C class sums of the proxies first, so it costs
    O(CN·C·d) instead of O((CN)²·d) and never forms :math:`P P^\top`. It is skipped when λ = 0.

    Where the official code differs: its mask is :math:`Z \ne 0` (the same except when kept
    similarities cancel exactly) and it exponentiates :math:`Z` without subtracting the maximum;
    here the log-softmax cannot overflow.

    Args:
        num_classes: C, the number of training classes; labels must lie in [0, C).
        embedding_size: d.
        proxies_per_class: N.
        r: share of the C·N proxies each sample keeps; :math:`k = \lceil rCN \rceil` with r read as
            the decimal it is written as (r = 0.07, CN = 100 gives 7; in floats 0.07·100 > 7), clamped
            to [1, CN].
        lambda_reg: λ, the weight of :math:`L_p`.
        use_spos: keep each sample's own proxies (the :math:`S_{pos}` term); ``False`` = plain top-k.
            A sample whose class then has no kept proxy has :math:`P_{iy_i} = 0` under the mask: it
            adds nothing to the sum over i (the official code adds the constant −log 1e-20 and no
            gradient), the mean still divides by B.
        use_mask: softmax over the classes with a kept proxy only; ``False`` = over all C classes,
            a class without a kept proxy entering with :math:`Z = 0`.
        use_reg: add :math:`\lambda L_p`; ``False`` = :math:`L_{cls}` alone.
        subgraph: ``False`` = no subgraph: every proxy kept (k = CN), a plain softmax over the
            classes of the summed similarities :math:`Z = S Y_p`.
        regularizer: how :math:`L_p` is computed.

            * ``full``: all CN rows of the (CN × C) logits at once; memory O(CN·C).
            * ``chunked``: the same value and gradients, ``chunk_size`` rows at a time, each chunk
              recomputed in the backward pass (activation checkpointing), so memory is
              O(chunk_size·C) whatever CN; the time is that of ``full`` plus one more pass.
            * ``batch``: a stochastic estimate: the mean over the proxies of the classes present in
              the batch only (at most B·N rows), each still against all C classes. A proxy is
              regularised when its class is sampled, so over an epoch classes weigh by how often
              they are drawn; memory and time O(B·N·C·d), like :math:`S` itself. The choice at a
              million classes, where even the chunked exact form needs (CN)·C·d operations per step.
        chunk_size: rows per chunk of ``chunked``; ``None`` = as many as make 2**24 logits.

    Shapes: embeddings (B, d), labels (B,) → scalar.
    """

    def __init__(self, num_classes: int, embedding_size: int, proxies_per_class: int = 12, r: float = 0.05,
                 lambda_reg: float = 0.3, *, use_spos: bool = True, use_mask: bool = True, use_reg: bool = True,
                 subgraph: bool = True, regularizer: str = "full", chunk_size: Optional[int] = None) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("embedding_size", embedding_size),
                            ("proxies_per_class", proxies_per_class)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 < r <= 1:
            raise ValueError(f"r must lie in (0, 1] (the share of proxies each sample keeps), got {r}")
        if lambda_reg < 0:
            raise ValueError(f"lambda_reg must be >= 0, got {lambda_reg}")
        if regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {', '.join(REGULARIZERS)}, got {regularizer!r}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.num_classes = num_classes
        self.proxies_per_class = proxies_per_class
        self.r = r
        self.lambda_reg = lambda_reg
        self.use_spos = use_spos
        self.use_mask = use_mask
        self.use_reg = use_reg
        self.subgraph = subgraph
        self.regularizer = regularizer
        self.chunk_size = chunk_size
        num_proxies = num_classes * proxies_per_class
        self.k = min(max(math.ceil(Fraction(str(r)) * num_proxies), 1), num_proxies)
        if subgraph and use_spos and use_mask and self.k <= proxies_per_class:
            warnings.warn(
                f"ProxyGML keeps k = ceil(r·C·N) = {self.k} proxies per sample, no more than the N = "
                f"{proxies_per_class} proxies of its own class: with S_pos and the mask every sample's softmax "
                f"holds its own class alone and L_cls is 0. Raise r above 1/C = {1 / num_classes:.3g} "
                f"(or lower N).", stacklevel=2)
        self.proxies = nn.Parameter(torch.empty(num_proxies, embedding_size))
        self.register_buffer("proxy_labels", torch.arange(num_classes).repeat_interleave(proxies_per_class),
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform with the official (d, CN) layout's fan: uniform in ±1/√(CN)."""
        nn.init.kaiming_uniform_(self.proxies, a=math.sqrt(5), mode="fan_out")

    def terms(self, embeddings: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``loss`` = L, ``loss_cls`` = :math:`L_{cls}` and ``loss_reg`` = :math:`L_p` (0 when not used)."""
        check_embeddings_labels(embeddings, labels, self.num_classes)
        if embeddings.size(1) != self.proxies.size(1):
            raise ValueError(f"embeddings have {embeddings.size(1)} channels but the loss was built for "
                             f"embedding_size={self.proxies.size(1)}")
        labels = labels.to(embeddings.device)
        # S = X̂ P̂ᵀ with the proxies' norms applied to the columns: no normalised copy of the CN × d proxies
        inv_norm = self.proxies.norm(dim=1).clamp_min(NORM_EPS).reciprocal()
        sim = F.normalize(embeddings, dim=1, eps=NORM_EPS) @ self.proxies.t() * inv_norm
        loss_cls = self._classification(sim, labels)
        if self.use_reg and self.lambda_reg > 0:
            loss_reg = self._regularization(inv_norm, labels)
            loss = loss_cls + self.lambda_reg * loss_reg
        else:
            loss_reg = loss_cls.new_zeros(())
            loss = loss_cls
        return {"loss": loss, "loss_cls": loss_cls, "loss_reg": loss_reg}

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.terms(embeddings, labels)["loss"]

    def _classification(self, sim: Tensor, labels: Tensor) -> Tensor:
        """:math:`L_{cls}` from the similarities S (B, CN)."""
        num_rows = sim.size(0)
        if self.subgraph:
            idx = select_proxies(sim.detach(), labels, self.proxy_labels, self.k, keep_own=self.use_spos,
                                 own_per_row=self.proxies_per_class)
            classes, kept = self.proxy_labels[idx], sim.gather(1, idx)
            if self.use_mask:  # classes without a kept proxy stay at -inf: probability 0
                z = sim.new_full((num_rows, self.num_classes), -math.inf)
                z = z.scatter_reduce(1, classes, kept, "sum", include_self=False)
            else:
                z = sim.new_zeros(num_rows, self.num_classes).scatter_add(1, classes, kept)
        else:
            z = sim.view(num_rows, self.num_classes, self.proxies_per_class).sum(dim=2)
        log_p = z.log_softmax(dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
        return -log_p.masked_fill(torch.isneginf(log_p), 0.0).sum() / num_rows

    def _regularization(self, inv_norm: Tensor, labels: Tensor) -> Tensor:
        """:math:`L_p` from the proxies and their inverse norms (CN,), as chosen by ``regularizer``."""
        proxies, n = self.proxies, self.proxies_per_class
        if n == 1:
            class_sums, column_scale = proxies, inv_norm
        else:
            class_sums = (proxies * inv_norm.unsqueeze(1)).view(self.num_classes, n, -1).sum(dim=1)
            column_scale = None
        if self.regularizer == "full":
            return _proxy_class_ce_sum(proxies, inv_norm, class_sums, column_scale, self.proxy_labels) / len(proxies)
        if self.regularizer == "batch":
            classes = labels.unique()
            rows = (classes.view(-1, 1) * n + torch.arange(n, device=classes.device)).view(-1)
            return _proxy_class_ce_sum(proxies[rows], inv_norm[rows], class_sums, column_scale,
                                       self.proxy_labels[rows]) / len(rows)
        chunk = self.chunk_size or max(1, CHUNK_ELEMENTS // self.num_classes)
        total = sum(checkpoint(_proxy_class_ce_sum, rows, rows_inv, class_sums, column_scale, targets,
                               use_reentrant=False)
                    for rows, rows_inv, targets in zip(proxies.split(chunk), inv_norm.split(chunk),
                                                       self.proxy_labels.split(chunk)))
        return total / len(proxies)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, proxies_per_class={self.proxies_per_class}, "
                f"embedding_size={self.proxies.size(1)}, r={self.r}, k={self.k}, lambda_reg={self.lambda_reg}, "
                f"use_spos={self.use_spos}, use_mask={self.use_mask}, use_reg={self.use_reg}, "
                f"subgraph={self.subgraph}, regularizer={self.regularizer!r}")
