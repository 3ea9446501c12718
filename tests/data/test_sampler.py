import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from pygml.data.sampler import PKSampler, max_batches


def _labels(counts, seed=0):
    """Labels with ``counts[c]`` samples of class ``10 * c + 3``, in a shuffled order."""
    labels = np.repeat(10 * np.arange(len(counts)) + 3, counts)
    return np.random.default_rng(seed).permutation(labels)


def _check_batches(batches, labels, P, K):
    batches = np.asarray(batches)
    assert batches.ndim == 2 and batches.shape[1] == P * K
    lab = labels[batches].reshape(len(batches), P, K)
    assert (lab == lab[:, :, :1]).all(), "the K indices of a class must be together"
    for row in lab[:, :, 0]:
        assert len(set(row.tolist())) == P, "P distinct classes per batch"


def _brute_force_batches(chunks, P):
    best = 0
    for B in range(1, sum(chunks) + 1):
        if sum(min(m, B) for m in chunks) >= P * B:
            best = B
    return best


def test_every_batch_is_p_classes_by_k_samples():
    labels = _labels([7, 12, 9, 5, 8, 20, 4, 6])
    s = PKSampler(labels, 3, 4, seed=1)
    batches = list(s)
    assert len(batches) == len(s) > 0
    _check_batches(batches, labels, 3, 4)


def test_epoch_length_hand_computed():
    # chunks of K=4: [2, 2, 2, 1]; B=3 gives 2+2+2+1 = 7 >= 6, B=4 gives 7 < 8
    s = PKSampler(_labels([8, 9, 11, 4]), 2, 4)
    assert s.batches_per_round == 3 and len(s) == 3 and len(list(s)) == 3


def test_class_with_every_batch_is_forced_into_each_batch():
    # chunks [10, 1, 1, 1, 1], P=2: B=4 (4 + 4 = 8 >= 8; B=5: 5 + 4 = 9 < 10)
    labels = _labels([40, 4, 4, 4, 4])
    s = PKSampler(labels, 2, 4, seed=3)
    batches = np.asarray(list(s))
    assert batches.shape == (4, 8)
    classes = labels[batches][:, ::4]
    assert all(3 in row for row in classes), "the big class must be in every batch"
    others = np.sort(classes[classes != 3])
    np.testing.assert_array_equal(others, [13, 23, 33, 43])


def test_no_index_repeats_within_an_epoch_for_classes_of_at_least_k():
    labels = _labels([9, 13, 6, 21, 8, 4, 10])
    s = PKSampler(labels, 3, 3, seed=5)
    flat = np.concatenate(list(map(np.asarray, s)))
    assert np.bincount(flat).max() == 1


def test_deterministic_per_seed_and_epoch():
    labels = _labels([15, 12, 9, 30, 8, 11])
    a, b = PKSampler(labels, 3, 2, seed=7), PKSampler(labels, 3, 2, seed=7)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    assert list(a) == list(a)
    first = list(a)
    a.set_epoch(5)
    assert list(a) != first
    c = PKSampler(labels, 3, 2, seed=8)
    c.set_epoch(4)
    assert list(c) != first


def test_small_classes_replace_pads_with_repeats():
    labels = _labels([1, 2, 6, 6, 6])
    single = int(np.flatnonzero(labels == 3)[0])
    pair = set(np.flatnonzero(labels == 13).tolist())
    seen_single = seen_pair = False
    s = PKSampler(labels, 3, 3, seed=0)
    for epoch in range(20):
        s.set_epoch(epoch)
        for batch in s:
            lab = labels[batch]
            if 3 in lab:
                assert batch[list(lab).index(3) : list(lab).index(3) + 3] == [single] * 3
                seen_single = True
            if 13 in lab:
                chunk = [i for i, y in zip(batch, lab) if y == 13]
                assert len(chunk) == 3 and set(chunk) == pair, "both images once, plus one repeat"
                seen_pair = True
    assert seen_single and seen_pair


def test_small_classes_drop_never_samples_them():
    labels = _labels([1, 2, 6, 6, 6, 7])
    s = PKSampler(labels, 3, 3, seed=0, small_classes="drop")
    for epoch in range(5):
        s.set_epoch(epoch)
        for batch in s:
            assert not set(labels[batch].tolist()) & {3, 13}
    with pytest.raises(ValueError, match="classes with at least 3 samples"):
        PKSampler(labels, 5, 3, small_classes="drop")


def test_ranks_are_disjoint_equal_and_cover_the_epoch():
    labels = _labels([11, 9, 14, 7, 8, 12, 10])
    full = PKSampler(labels, 2, 3, seed=2)
    shares = [PKSampler(labels, 2, 3, seed=2, rank=r, world_size=2) for r in range(2)]
    for s in [full, *shares]:
        s.set_epoch(3)
    glob = full.epoch_batches()
    b0, b1 = (np.asarray(list(s)) for s in shares)
    assert len(b0) == len(b1) == len(shares[0]) == full.batches_per_round // 2
    interleaved = np.empty((2 * len(b0), b0.shape[1]), dtype=np.int64)
    interleaved[0::2], interleaved[1::2] = b0, b1
    np.testing.assert_array_equal(interleaved, glob[: len(interleaved)])
    assert not set(np.concatenate(b0).tolist()) & set(np.concatenate(b1).tolist())


def test_resume_mid_epoch_gives_the_remaining_batches():
    labels = _labels([11, 9, 14, 7, 8, 12, 10, 16])
    a = PKSampler(labels, 3, 2, seed=4)
    a.set_epoch(2)
    uninterrupted = list(a)
    a.set_position(3)
    state = a.state_dict()
    assert state == {"epoch": 2, "seed": 4, "start": 3}

    b = PKSampler(labels, 3, 2, seed=0)
    b.load_state_dict(state)
    b.set_epoch(2)  # the training loop calls set_epoch again: the position is kept
    assert len(b) == len(uninterrupted) - 3
    assert list(b) == uninterrupted[3:]
    b.set_epoch(3)  # a new epoch starts from its first batch
    assert len(b) == len(uninterrupted) and b.state_dict()["start"] == 0


def test_num_batches_longer_than_a_round_appends_rounds():
    labels = _labels([5, 6, 7])
    s = PKSampler(labels, 2, 2, num_batches=20, seed=1)
    assert s.batches_per_round == 4
    batches = list(s)
    assert len(batches) == 20 == len(s)
    _check_batches(batches, labels, 2, 2)
    assert batches[:4] != batches[4:8]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes_per_batch=0), "classes_per_batch must be >= 1"),
        (dict(samples_per_class=0), "samples_per_class must be >= 1"),
        (dict(classes_per_batch=4), "classes_per_batch=4 exceeds the number of classes"),
        (dict(classes_per_batch=2.0), "classes_per_batch must be an int"),
        (dict(rank=2, world_size=2), "rank must be in"),
        (dict(world_size=0), "world_size must be >= 1"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(num_batches=0), "num_batches must be >= 1"),
        (dict(small_classes="skip"), "small_classes must be one of"),
        (dict(world_size=100), "fewer than world_size=100"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(labels=_labels([4, 4, 4]), classes_per_batch=2, samples_per_class=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PKSampler(**args)


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.zeros((3, 2), dtype=np.int64), "labels must be 1-D"),
        (np.array([0.0, 1.0, 1.0]), "integer class labels"),
        (np.array([], dtype=np.int64), "labels is empty"),
    ],
)
def test_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        PKSampler(labels, 1, 1)


def test_bad_state_and_position():
    s = PKSampler(_labels([4, 4, 4]), 2, 2)
    with pytest.raises(ValueError, match="missing"):
        s.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="exceeds the epoch"):
        s.set_position(len(s) + 1)


def test_works_as_batch_sampler_of_a_dataloader():
    labels = _labels([6, 8, 5, 9, 7])
    ds = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    s = PKSampler(torch.as_tensor(labels), 2, 3, seed=0)
    loader = DataLoader(ds, batch_sampler=s)
    assert len(loader) == len(s)
    got = [(idx.numpy(), y.numpy()) for idx, y in loader]
    assert len(got) == len(s)
    for (idx, y), batch in zip(got, s):
        np.testing.assert_array_equal(idx, batch)
        np.testing.assert_array_equal(y, labels[idx])
        assert idx.shape == (6,)


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(1, 9), min_size=1, max_size=10),
    P=st.integers(1, 10),
    K=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_property_random_label_patterns(counts, P, K, seed):
    chunks = [max(1, n // K) for n in counts]
    P = min(P, len(counts))
    labels = _labels(counts, seed)
    s = PKSampler(labels, P, K, seed=seed)
    assert s.batches_per_round == max_batches(np.array(chunks), P) == _brute_force_batches(chunks, P)
    batches = np.asarray(list(s))
    assert len(batches) == len(s) == s.batches_per_round
    _check_batches(batches, labels, P, K)
    per_class = np.bincount(np.searchsorted(np.unique(labels), labels[batches][:, ::K].ravel()), minlength=len(counts))
    assert (per_class <= np.minimum(chunks, len(batches))).all()
    big = np.isin(labels, 10 * np.flatnonzero(np.asarray(counts) >= K) + 3)
    used_big = batches.ravel()[big[batches.ravel()]]
    assert np.unique(used_big).size == used_big.size, "classes of >= K samples never repeat an index"
