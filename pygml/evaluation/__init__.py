r"""The retrieval evaluator shared by every method: Recall@K, precision@1, R-precision, MAP@R, NMI, AMI.

Two protocols, as in the benchmarks:

* **leave-one-out** (``reference=None``; CUB-200-2011, Cars196, SOP): the query set is its own gallery
  and each query's own row is removed from its ranking *by index* (duplicates and ties are safe);
* **query vs gallery** (In-Shop): queries are ranked against a separate reference set.

Definitions
-----------
For query :math:`i` with label :math:`y_i`, let :math:`n_i(1), n_i(2), \dots` be the gallery rows
sorted by decreasing similarity, **ties broken by the smaller reference index** (the order of
an exhaustive faiss ``IndexFlatL2`` search, which is what pytorch-metric-learning uses), let
:math:`\mathrm{rel}_i(k) = [y_{n_i(k)} = y_i]` and let :math:`R_i` be the number of gallery rows with
label :math:`y_i`. A query with :math:`R_i = 0` (its class has no other member) cannot be answered;
it is left out of every retrieval metric, as pytorch-metric-learning's ``AccuracyCalculator`` does,
and the averages run over the set :math:`Q` of the other queries:

.. math::

    \mathrm{recall@}K &= \frac{1}{|Q|} \sum_{i \in Q} \big[\exists\, k \le K : \mathrm{rel}_i(k) = 1\big]
    \qquad \text{(a hit rate, not IR recall)} \\
    \mathrm{precision\_at\_1} &= \frac{1}{|Q|} \sum_{i \in Q} \mathrm{rel}_i(1) = \mathrm{recall@}1 \\
    \mathrm{r\_precision} &= \frac{1}{|Q|} \sum_{i \in Q} \frac{1}{R_i} \sum_{k=1}^{R_i} \mathrm{rel}_i(k) \\
    \mathrm{mean\_average\_precision\_at\_r} &= \frac{1}{|Q|} \sum_{i \in Q} \frac{1}{R_i}
        \sum_{k=1}^{R_i} \mathrm{rel}_i(k)\, P_i(k), \qquad P_i(k) = \frac{1}{k} \sum_{j=1}^{k} \mathrm{rel}_i(j)

(R-precision and MAP@R: Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020.)
Clustering metrics run k-means (faiss, 20 iterations, fixed seed, all points used) on the query
embeddings as the similarity sees them (L2-normalised for cosine) with as many clusters as query
classes :math:`C`, then compare the assignment :math:`A` with the labels :math:`Y`:

.. math::

    \mathrm{NMI} = \frac{I(Y; A)}{\tfrac12 \big(H(Y) + H(A)\big)}, \qquad
    \mathrm{AMI} = \frac{I(Y; A) - \mathbb{E}[I]}{\tfrac12 \big(H(Y) + H(A)\big) - \mathbb{E}[I]}

NMI is computed here from the contingency table (natural logarithms, arithmetic mean: scikit-learn's
``normalized_mutual_info_score``); AMI, whose expectation term is costly, is delegated to
scikit-learn, imported only when ``ami=True``.

How it runs
-----------
One concern per module:

* :mod:`pygml.evaluation.inputs`: embeddings, labels and settings converted and checked (float32 rows,
  int64 labels, an error naming the argument);
* :mod:`pygml.evaluation.ranking`: the exact ranking, in blocks of bounded memory (``chunk_size`` query
  rows, about 512 MiB by default); its docstring says how it avoids sorting the gallery K deep and
  computes half the products in leave-one-out. Its result is that of an exhaustive exact kNN search,
  including the order of ties;
* :mod:`pygml.evaluation.index`: the approximate search (``search=`` a faiss index factory string or
  index, :func:`build_index`), for galleries where the exhaustive ranking is too slow or too large;
* :mod:`pygml.evaluation.clustering`: k-means, NMI and AMI;
* :mod:`pygml.evaluation.metrics`: :func:`evaluate`, :class:`RetrievalEvaluator` and the averages above.

All arithmetic is float32 (inputs of any float dtype are converted), averages float64.
"""

from pygml.evaluation.clustering import kmeans_assignments, normalized_mutual_info
from pygml.evaluation.index import build_index, empty_index
from pygml.evaluation.inputs import METRICS
from pygml.evaluation.metrics import RetrievalEvaluator, evaluate

__all__ = [
    "METRICS",
    "RetrievalEvaluator",
    "build_index",
    "empty_index",
    "evaluate",
    "kmeans_assignments",
    "normalized_mutual_info",
]
