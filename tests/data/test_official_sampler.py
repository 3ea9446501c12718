from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pygml.data.official_sampler import ClassPassSampler, IntraBatchSampler
from pygml.data.sampler import PKSampler
from pygml.losses.infonce import PairwiseInfoNCELoss

#: class sizes like CUB-200-2011's 100 training classes (5,872 images; CUB: 5,864, mostly 60 a class)
CUB_LIKE = [60] * 86 + [59, 58, 57, 56, 55, 53, 52, 50, 49, 48, 46, 45, 43, 41]
#: class sizes like Stanford Online Products' training classes: 2 to 12 images a class
SOP_LIKE = [size for size, share in zip(range(2, 13), (100, 140, 160, 140, 120, 80, 60, 40, 30, 30, 100))
            for _ in range(share)]


def _labels(counts, seed=0):
    """Labels with ``counts[c]`` samples of class ``10 * c + 3``, in a shuffled order."""
    labels = np.repeat(10 * np.arange(len(counts)) + 3, counts)
    return np.random.default_rng(seed).permutation(labels)


def _chunks(batch, labels, k):
    """The batch cut into its chunks of K: (P, K) indices, each chunk of one class."""
    chunks = np.asarray(batch).reshape(-1, k)
    lab = labels[chunks]
    assert (lab == lab[:, :1]).all(), "the K indices of a chunk must share a class"
    return chunks


def test_small_classes_are_padded_to_k_and_every_class_gets_one_chunk_more():
    counts = [3, 4, 9, 10]  # K = 4: chunks 1+1, 1+1, 2+1, 2+1 = 10 = 5 batches of P = 2, no filler
    labels = _labels(counts)
    s = IntraBatchSampler(labels, 2, 4, seed=1)
    assert s.chunks_per_round() == 10 and s.num_batches == len(s) == 5
    chunks = np.concatenate([_chunks(b, labels, 4) for b in s])
    per_class = Counter(labels[chunks[:, 0]].tolist())
    assert per_class == {3: 2, 13: 2, 23: 3, 33: 3}
    for c, n in zip((3, 13, 23, 33), counts):
        mine = chunks[labels[chunks[:, 0]] == c]
        # every image of the class is used, and the padding only repeats the class's own images
        assert set(mine.ravel().tolist()) == set(np.flatnonzero(labels == c).tolist())
        assert mine.size == (max(n, 4) // 4 + 1) * 4


def test_a_class_can_fill_several_places_of_a_batch():
    labels = _labels([20, 20, 20])
    s = IntraBatchSampler(labels, 4, 5, seed=0)  # P = 4 > 3 classes: every batch repeats a class
    for batch in s:
        classes = labels[_chunks(batch, labels, 5)[:, 0]]
        assert len(set(classes.tolist())) < 4
    # with more classes than P a repeat still happens now and then (PKSampler never repeats)
    labels = _labels([30] * 8)
    s = IntraBatchSampler(labels, 4, 3, seed=0)
    repeats = 0
    for epoch in range(5):
        s.set_epoch(epoch)
        repeats += sum(len(set(labels[_chunks(b, labels, 3)[:, 0]].tolist())) < 4 for b in s)
    assert repeats > 0


def test_filler_chunks_complete_the_last_batch():
    labels = _labels([9, 9, 9])  # K = 3: 4 chunks a class, 12; P = 5 -> 3 batches, 3 chunks copied
    s = IntraBatchSampler(labels, 5, 3, seed=2)
    batches = list(s)
    assert len(batches) == 3 and all(len(b) == 15 for b in batches)
    chunks = [tuple(c) for b in batches for c in _chunks(b, labels, 3)]
    assert len(chunks) == 15 and len(set(chunks)) <= 12


@pytest.mark.parametrize("counts,p,k,official,pk,ratio", [
    (CUB_LIKE, 6, 9, 115, 98, 1.17),
    (SOP_LIKE, 15, 6, 140, 73, 1.92),
])
def test_batches_per_epoch_against_pk_sampler(counts, p, k, official, pk, ratio):
    labels = _labels(counts)
    s = IntraBatchSampler(labels, p, k)
    ref = PKSampler(labels, p, k)
    assert s.num_batches == official and ref.num_batches == pk
    assert round(s.num_batches / ref.num_batches, 2) == ratio
    assert s.num_batches == -(-sum(max(n, k) // k + 1 for n in counts) // p)


def test_cub_redraws_p_and_k_every_epoch():
    labels = _labels(CUB_LIKE)
    s = IntraBatchSampler(labels, 6, 9, redraw_pk=True, seed=3)
    assert s.factorisations == [(2, 27), (3, 18), (6, 9), (9, 6), (18, 3), (27, 2)]
    drawn = []
    for epoch in range(12):
        s.set_epoch(epoch)
        p, k = s.pk()
        drawn.append((p, k))
        assert p * k == s.batch_size == 54
        assert s.num_batches == -(-sum(max(n, k) // k + 1 for n in CUB_LIKE) // p)
        if epoch < 3:
            batches = list(s)
            assert len(batches) == s.num_batches
            for b in batches:
                assert len(b) == 54
                _chunks(b, labels, k)
    assert len(set(drawn)) >= 3
    fixed = IntraBatchSampler(labels, 6, 9, seed=3)
    assert {fixed.pk(e) for e in range(12)} == {(6, 9)}


def test_deterministic_per_seed_and_epoch():
    labels = _labels([15, 12, 9, 30, 8, 11])
    for make in (lambda seed: IntraBatchSampler(labels, 3, 4, seed=seed, redraw_pk=True),
                 lambda seed: ClassPassSampler(labels, 4, 3, seed=seed)):
        a, b = make(7), make(7)
        a.set_epoch(4)
        b.set_epoch(4)
        assert list(a) == list(b) == list(a)
        first = list(a)
        a.set_epoch(5)
        assert list(a) != first
        c = make(8)
        c.set_epoch(4)
        assert list(c) != first


@pytest.mark.parametrize("make", [
    lambda labels, **kw: IntraBatchSampler(labels, 3, 4, **kw),
    lambda labels, **kw: ClassPassSampler(labels, 3, 4, **kw),
])
def test_resume_mid_epoch(make):
    labels = _labels([9, 13, 6, 21, 8, 4, 10, 12, 7, 5, 16, 3])
    s = make(labels, seed=4)
    s.set_epoch(2)
    full = list(s)
    s.set_position(2)
    assert len(s) == len(full) - 2 and list(s) == full[2:]
    state = s.state_dict()
    fresh = make(labels, seed=0)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # the same epoch keeps the restored position
    assert list(fresh) == full[2:]
    fresh.set_epoch(3)  # a new epoch starts at its first batch
    assert fresh.start == 0
    with pytest.raises(ValueError, match="exceeds"):
        s.set_position(len(full) + 1)
    with pytest.raises(ValueError, match="missing"):
        s.load_state_dict({"epoch": 1})


@pytest.mark.parametrize("make", [
    lambda labels, **kw: IntraBatchSampler(labels, 3, 4, **kw),
    lambda labels, **kw: ClassPassSampler(labels, 2, 4, **kw),
])
def test_shards_are_disjoint_equal_and_cover_the_global_list(make):
    labels = _labels([9, 13, 6, 21, 8, 4, 10, 12, 7, 5, 16])
    world = 3
    shards = [make(labels, seed=5, rank=r, world_size=world) for r in range(world)]
    for s in shards:
        s.set_epoch(1)
    got = [list(s) for s in shards]
    assert len({len(g) for g in got}) == 1 and len(got[0]) == shards[0].num_batches
    glob = shards[0].epoch_batches()
    assert len(glob) == world * len(got[0])
    for r, g in enumerate(got):
        assert g == [b.tolist() for b in glob[r::world]]


def test_num_batches_appends_rounds_and_works_as_a_batch_sampler():
    labels = _labels([6, 7, 8, 5])
    s = IntraBatchSampler(labels, 2, 3, seed=6, num_batches=25)
    assert s.batches_per_round() < 25 and len(list(s)) == 25
    data = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    for idx, y in DataLoader(data, batch_sampler=s):
        assert len(idx) == 6
        np.testing.assert_array_equal(y.numpy(), labels[idx.numpy()])


def test_intra_batch_sampler_errors():
    labels = _labels([5, 5])
    with pytest.raises(ValueError, match="divisor"):
        IntraBatchSampler(labels, 1, 7, redraw_pk=True)
    with pytest.raises(ValueError, match="too few"):
        IntraBatchSampler(_labels([2]), 10, 2)
    with pytest.raises(ValueError, match="world_size"):
        IntraBatchSampler(labels, 2, 5, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        IntraBatchSampler(labels, 2, 5, rank=1)
    with pytest.raises(ValueError, match="samples_per_class"):
        IntraBatchSampler(labels, 2, 0)
    with pytest.raises(ValueError, match="integer"):
        IntraBatchSampler([0.5, 1.5], 2, 1)
    with pytest.raises(ValueError, match="empty"):
        IntraBatchSampler([], 2, 1)


def test_class_pass_covers_every_class_once_per_epoch():
    counts = [12, 3, 9, 20, 9, 15, 4, 11, 9, 30]
    labels = _labels(counts)
    s = ClassPassSampler(labels, 4, 9, seed=1)
    assert s.num_batches == 3  # 10 classes: 4 + 4 + 2
    batches = list(s)
    assert [len(b) for b in batches] == [36, 36, 18]
    seen = []
    for b in batches:
        lab = labels[np.asarray(b)].reshape(-1, 9)
        assert (lab == lab[:, :1]).all()
        seen.extend(lab[:, 0].tolist())
        for row in np.asarray(b).reshape(-1, 9):
            if counts[labels[row[0]] // 10] >= 9:
                assert len(set(row.tolist())) == 9, "no repeat within a class that has m images"
    assert sorted(seen) == sorted(10 * np.arange(10) + 3)
    assert len(list(ClassPassSampler(labels, 4, 9, drop_last=True))) == 2


def test_class_pass_batches_feed_the_pairwise_infonce_loss():
    labels = _labels([12, 9, 20, 9, 15, 11])
    s = ClassPassSampler(labels, 3, 9, seed=2)
    batch = next(iter(s))
    x = torch.randn(len(batch), 8)
    y = torch.as_tensor(labels[batch])
    torch.testing.assert_close(PairwiseInfoNCELoss(views=9)(x, y), PairwiseInfoNCELoss()(x, y))


def test_class_pass_without_reshuffle_keeps_the_classes_of_each_batch():
    labels = _labels([10] * 12)
    groups = {}
    for reshuffle in (False, True):
        s = ClassPassSampler(labels, 4, 3, seed=3, reshuffle=reshuffle)
        per_epoch = []
        for epoch in range(3):
            s.set_epoch(epoch)
            batches = list(s)
            per_epoch.append(([labels[b[0::3]].tolist() for b in batches], batches))
        groups[reshuffle] = per_epoch
    frozen = groups[False]
    assert frozen[0][0] == frozen[1][0] == frozen[2][0], "same classes together in every epoch"
    assert frozen[0][1] != frozen[1][1], "but other images"
    assert groups[True][0][0] != groups[True][1][0]


def test_class_pass_errors():
    with pytest.raises(ValueError, match="exceeds the number of classes"):
        ClassPassSampler(_labels([5, 5]), 3, 2)
    with pytest.raises(ValueError, match="world_size"):
        ClassPassSampler(_labels([5] * 4), 3, 2, world_size=3)
