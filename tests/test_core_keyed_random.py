"""Counter-based randomness: a sample's numbers depend on (seed, epoch, global index,
stream, position) only -- not on the batch it sits in or the rank that holds it.

    pytest tests/test_core_keyed_random.py -q
"""
import numpy as np
import pytest

from core.keyed_random import keyed_noise, keyed_uniform, sample_keys


def test_same_key_same_numbers_regardless_of_batch():
    idx = np.array([5, 900, 12, 60000, 7])
    full = keyed_uniform(sample_keys(3, 1, idx), 2, (4, 3))
    perm = np.array([3, 0, 4, 1, 2])
    shuffled = keyed_uniform(sample_keys(3, 1, idx[perm]), 2, (4, 3))
    np.testing.assert_array_equal(shuffled, full[perm])
    single = keyed_uniform(sample_keys(3, 1, idx[[2]]), 2, (4, 3))
    np.testing.assert_array_equal(single[0], full[2])
    # two "ranks" taking every 2nd sample see the same numbers as one process
    r0 = keyed_noise(3, 1, idx[0::2])(2, (4, 3))
    r1 = keyed_noise(3, 1, idx[1::2])(2, (4, 3))
    np.testing.assert_array_equal(r0, full[0::2])
    np.testing.assert_array_equal(r1, full[1::2])


def test_position_depends_only_on_flat_index():
    keys = sample_keys(0, 0, np.arange(4))
    a = keyed_uniform(keys, 1, (6,))
    b = keyed_uniform(keys, 1, (2, 3))
    np.testing.assert_array_equal(a.reshape(4, 2, 3), b)
    assert np.array_equal(keyed_uniform(keys, 1, (10,))[:, :6], a)    # a prefix of a longer draw


@pytest.mark.parametrize("change", ["seed", "epoch", "stream", "index"])
def test_different_inputs_different_numbers(change):
    args = {"seed": 1, "epoch": 2, "stream": 3, "index": 4}
    base = keyed_uniform(sample_keys(args["seed"], args["epoch"], np.array([args["index"]])), args["stream"], (64,))
    args[change] += 1
    other = keyed_uniform(sample_keys(args["seed"], args["epoch"], np.array([args["index"]])), args["stream"], (64,))
    assert np.mean(base == other) < 0.05


def test_distribution():
    u = keyed_uniform(sample_keys(7, 0, np.arange(2000)), 0, (50,))
    assert u.dtype == np.float32 and u.shape == (2000, 50)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    hist = np.bincount((u * 10).astype(int).ravel(), minlength=10) / u.size
    assert np.all(np.abs(hist - 0.1) < 0.005)


def test_keys_are_uint64_and_vectorized():
    keys = sample_keys(0, 0, np.arange(10**5))
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == 10**5
    assert sample_keys(0, 0, np.array([], dtype=np.int64)).shape == (0,)
    assert keyed_uniform(sample_keys(0, 0, np.array([], dtype=np.int64)), 0, (3,)).shape == (0, 3)
    with pytest.raises(ValueError, match="seed must be an int"):
        sample_keys(0.5, 0, np.arange(3))


def test_dropout_mask_is_keyed_by_layer_index_and_sample():
    from core.model import Model
    m = Model([{"type": "flatten"}, {"type": "dropout", "p": 0.25}], (3, 4, 1))
    idx = np.array([11, 4, 7])
    out = m.forward(np.ones((3, 3, 4, 1)), True, keyed_noise(9, 2, idx))
    u = keyed_uniform(sample_keys(9, 2, idx), 1, (12,))           # stream = layer index 1
    np.testing.assert_array_equal(out, (u >= 0.25) / np.float32(0.75))
    assert 0 < (out == 0).mean() < 0.6
