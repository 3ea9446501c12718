r"""Pairwise InfoNCE over views: the loss of the BGFormer authors' release (methods.md section 3).

The release's sampler gives each class of a batch the same number m of images; the loss treats the m
images of a class as m *views* of it and, for every ordered pair of views, classifies each class's view i
against the other classes through their views i and j.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pygml.checks import value_checks_enabled
from pygml.losses.base import check_embeddings_labels

#: smallest norm divided by when the embeddings are L2-normalised (as in ``F.normalize``)
NORM_EPS = 1e-12


def _describe_counts(labels: Tensor) -> str:
    classes, counts = labels.detach().cpu().unique(return_counts=True)
    pairs = [f"{c}: {n}" for c, n in zip(classes.tolist(), counts.tolist())]
    shown = ", ".join(pairs[:8]) + (f", ... ({len(pairs)} classes)" if len(pairs) > 8 else "")
    return f"rows per class {{{shown}}}"


def _views_from_labels(labels: Tensor) -> int:
    """m, read from the labels on the host: every class must hold the same number m >= 2 of rows."""
    counts = labels.detach().cpu().unique(return_counts=True)[1]
    if bool((counts != counts[0]).any()):
        raise ValueError("PairwiseInfoNCELoss needs the same number of rows (views) in every class of the batch, "
                         f"got {_describe_counts(labels)}; sample m images per class (P×K batches)")
    return int(counts[0])


class PairwiseInfoNCELoss(nn.Module):
    r"""Pairwise InfoNCE over the m views of each class, called as ``loss(embeddings, labels)``.

    The B rows are grouped by class into :math:`z \in \mathbb{R}^{C \times m \times d}` (L2-normalised;
    the views of a class in the order its rows appear in the batch), every class holding the same number
    m ≥ 2 of rows. With cosine similarities over the temperature, :math:`s(a, b) = \langle z_a, z_b\rangle
    / \tau`, each ordered pair of views :math:`i \ne j` classifies the view-i row of every class c against
    the candidates :math:`\{z_{e,j}\}_{e} \cup \{z_{e,i}\}_{e \ne c}` (every class's view j, and the other
    classes' view i), the target being its own class's view j:

    .. math::
        \ell_{ij}(c) = -s(z_{c,i}, z_{c,j}) + \log\Bigl(\sum_{e} e^{s(z_{c,i}, z_{e,j})}
                       + \sum_{e \ne c} e^{s(z_{c,i}, z_{e,i})}\Bigr), \qquad
        L = \sum_{i \ne j} \frac{1}{C} \sum_{c} \ell_{ij}(c).

    As in the release, each pair's cross-entropy is averaged over the C classes and the m(m − 1) pairs are
    **summed** (not averaged): the loss grows with m(m − 1), which matters for gradient clipping and for
    optimisers that are not scale-invariant. The release calls it with embeddings already normalised (its
    head ends in an L2 normalisation; ``hyp_c = 0``); here they are normalised inside, so any scale works.
    Its default distance is hyperbolic (curvature 0.1), which this loss does not implement.

    The pairing of views across classes matters: permuting the rows of the batch leaves the loss unchanged
    as long as the rows of each class keep their relative order (or the same permutation of views is
    applied to every class); reordering the views of one class alone changes which rows are its negatives.

    **Grouping without reading labels.** With ``views=None`` the classes and their common size m are read
    from the labels on the host (a device-to-host copy per call; a ``ValueError`` names the counts when
    they differ). With ``views=m`` (the sampler's K) nothing is read: the rows are sorted by label on the
    device and reshaped to (B/m, m, d); B must be a multiple of m. A batch whose classes do not hold
    exactly m rows each then gives a NaN loss (the training loop's non-finite guard stops on it), and with
    value checks on (:mod:`pygml.checks`) a ``ValueError`` naming the counts.

    Args:
        temperature: τ; the release uses 0.2.
        views: m, the number of rows of every class; ``None`` = read from the labels.

    Shapes: embeddings (B, d), labels (B,) integers → scalar.
    """

    def __init__(self, temperature: float = 0.2, views: Optional[int] = None) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if views is not None and (isinstance(views, bool) or not isinstance(views, int) or views < 2):
            raise ValueError(f"views must be an int >= 2 (rows per class) or None, got {views!r}")
        self.temperature = float(temperature)
        self.views = views

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_embeddings_labels(embeddings, labels)
        checks = value_checks_enabled()
        n = embeddings.size(0)
        labels = labels.to(embeddings.device)
        m = self.views if self.views is not None else _views_from_labels(labels)
        if m < 2:
            raise ValueError(f"PairwiseInfoNCELoss needs at least 2 rows (views) per class, got {m}: "
                             f"{_describe_counts(labels)}")
        if n % m:
            raise ValueError(f"the batch has {n} rows, not a multiple of views={m}: every class must hold "
                             f"{m} rows")
        sorted_labels, order = torch.sort(labels, stable=True)
        grouped = sorted_labels.view(n // m, m)
        if self.views is None:
            valid = None  # the host already checked the counts
        else:
            same_class = (grouped == grouped[:, :1]).all()
            distinct = (grouped[1:, 0] > grouped[:-1, 0]).all()
            valid = same_class & distinct
            if checks and not bool(valid):
                raise ValueError(f"PairwiseInfoNCELoss was built for views={m} rows in every class, got "
                                 f"{_describe_counts(labels)}")
        z = F.normalize(embeddings, dim=1, eps=NORM_EPS)[order].view(n // m, m, -1)
        loss = self._pairwise(z)
        if valid is not None:
            loss = torch.where(valid, loss, loss.new_full((), float("nan")))
        return loss

    def _pairwise(self, z: Tensor) -> Tensor:
        """The loss of grouped, normalised rows z (C, m, d)."""
        num_classes, m, _ = z.shape
        # sim[c, i, e, k] = <z[c, i], z[e, k]> / tau
        sim = torch.einsum("cid,ekd->ciek", z, z) / self.temperature
        # log-sum-exp over every class's view j, for anchor (c, i): (C, m, m) indexed [c, i, j]
        lse_view_j = sim.logsumexp(dim=2)
        # log-sum-exp over the other classes' view i: (C, m) indexed [c, i]
        same_view = torch.diagonal(sim, dim1=1, dim2=3)  # (C, C, m) indexed [c, e, i]
        lse = lse_view_j
        if num_classes > 1:
            own = torch.eye(num_classes, dtype=torch.bool, device=z.device).unsqueeze(2)
            lse_others = same_view.masked_fill(own, float("-inf")).logsumexp(dim=1)
            lse = torch.logaddexp(lse_view_j, lse_others.unsqueeze(2))
        positive = torch.diagonal(sim, dim1=0, dim2=2).permute(2, 0, 1)  # (C, m, m) indexed [c, i, j]
        off_diagonal = ~torch.eye(m, dtype=torch.bool, device=z.device)
        return (lse - positive)[:, off_diagonal].sum() / num_classes

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, views={self.views}"


__all__ = ["PairwiseInfoNCELoss"]
