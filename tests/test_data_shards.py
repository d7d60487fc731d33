"""The epoch shard plan and reader: partition, determinism, world-size invariance, contents."""

import h5py
import numpy as np
import pytest

from data.hdf5 import read_arrays
from data.shards import (Shard, epoch_permutation, local_batch_positions, read_epoch_shard,
                         read_rows, read_split, shard_indices, split_train_val, steps_per_epoch)


def test_split_is_fixed_disjoint_and_complete():
    train, val = split_train_val(split_seed=0, val_size=5000, n_train=60000)
    assert train.dtype == val.dtype == np.int64
    assert len(train) == 55000 and len(val) == 5000
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.array_equal(np.union1d(train, val), np.arange(60000))
    again, val_again = split_train_val(0)
    assert np.array_equal(train, again) and np.array_equal(val, val_again)
    assert not np.array_equal(val, split_train_val(1)[1])


def test_epoch_permutation():
    train, _ = split_train_val(0, 100, 600)
    p0 = epoch_permutation(7, 0, train)
    assert p0.dtype == np.int64 and np.array_equal(np.sort(p0), train)
    assert np.array_equal(p0, epoch_permutation(7, 0, train))
    assert not np.array_equal(p0, epoch_permutation(7, 1, train))
    assert not np.array_equal(p0, epoch_permutation(8, 0, train))


def test_steps_and_positions():
    assert steps_per_epoch(55000, 128) == 429
    assert steps_per_epoch(500, 500) == 1
    assert list(local_batch_positions(10, 1, 4)) == [1, 5, 9]


@pytest.mark.parametrize("batch_size", [64, 63, 500])
def test_shards_partition_and_world_size_invariance(batch_size):
    train, val = split_train_val(0, 100, 600)
    steps = steps_per_epoch(len(train), batch_size)
    order = epoch_permutation(3, 2, train)
    global_batches = order[:steps * batch_size].reshape(steps, batch_size)
    for size in (1, 2, 3, 4):
        plans = [shard_indices(3, 2, rank, size, batch_size, train) for rank in range(size)]
        every = np.concatenate([indices for indices, _ in plans])
        # Together the ranks hold the epoch's samples minus the dropped tail, each once.
        assert np.array_equal(np.sort(every), np.sort(order[:steps * batch_size]))
        assert not np.intersect1d(every, val).size
        for k in range(steps):
            local = [indices[offsets[k]:offsets[k + 1]] for indices, offsets in plans]
            sizes = [len(part) for part in local]
            assert max(sizes) - min(sizes) <= 1
            # Interleaving the local batches back gives global batch k, whatever `size` is.
            rebuilt = np.empty(batch_size, np.int64)
            for rank, part in enumerate(local):
                rebuilt[rank::size] = part
            assert np.array_equal(rebuilt, global_batches[k])


def test_shard_reader_contents(small_h5):
    images, labels = read_arrays(small_h5, "train")
    shards = [read_epoch_shard(small_h5, seed=5, epoch=1, rank=r, size=3, batch_size=50,
                               val_size=100) for r in range(3)]
    for shard in shards:
        assert isinstance(shard, Shard) and shard.steps == 10
        assert shard.images.dtype == shard.labels.dtype == np.uint8
        assert shard.indices.dtype == shard.batch_offsets.dtype == np.int64
        np.testing.assert_array_equal(shard.images, images[shard.indices])
        np.testing.assert_array_equal(shard.labels, labels[shard.indices])
        assert shard.batch_offsets[0] == 0 and shard.batch_offsets[-1] == len(shard.indices)
    assert [len(s.indices) for s in shards] == [170, 170, 160]       # 17, 17, 16 per batch
    again = read_epoch_shard(small_h5, 5, 1, 0, 3, 50, val_size=100)
    assert np.array_equal(again.indices, shards[0].indices)
    later = read_epoch_shard(small_h5, 5, 2, 0, 3, 50, val_size=100)
    assert not np.array_equal(later.indices, shards[0].indices)


def test_read_rows_any_order_and_blocks(tmp_path, monkeypatch):
    import data.shards
    monkeypatch.setattr(data.shards, "BLOCK_ROWS", 7)                # many partial blocks
    data = np.arange(100 * 3, dtype=np.uint8).reshape(100, 3)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f.create_dataset("d", data=data, chunks=(8, 3))
        for indices in ([99, 0, 5, 5, 42, 6], [], list(range(100))[::-1]):
            np.testing.assert_array_equal(read_rows(f["d"], np.array(indices, np.int64)),
                                          data[indices])


def test_read_split(small_h5):
    x, y, idx = read_split(small_h5, "val", val_size=100)
    images, labels = read_arrays(small_h5, "train")
    assert np.array_equal(idx, split_train_val(0, 100, 600)[1])
    np.testing.assert_array_equal(x, images[idx])
    np.testing.assert_array_equal(y, labels[idx])
    tx, ty, tidx = read_split(small_h5, "test")
    assert tx.shape == (100, 28, 28) and np.array_equal(tidx, np.arange(100))
    with pytest.raises(ValueError):
        read_split(small_h5, "train")


def test_real_mnist_sanity_figures(mnist_h5):
    train_x, train_y = read_arrays(mnist_h5, "train")
    test_x, test_y = read_arrays(mnist_h5, "test")
    pixels = train_x.astype(np.float64) / 255
    assert abs(pixels.mean() - 0.1306605) < 1e-6
    assert abs(pixels.std() - 0.3081078) < 1e-6
    assert np.bincount(train_y).tolist() == [5923, 6742, 5958, 6131, 5842,
                                             5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982,
                                            892, 958, 1028, 974, 1009]
    assert test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert test_x.shape == (10000, 28, 28)


def test_real_shard_reads_the_right_rows(mnist_h5):
    train_x, train_y = read_arrays(mnist_h5, "train")
    shards = [read_epoch_shard(mnist_h5, seed=0, epoch=0, rank=r, size=4, batch_size=256)
              for r in range(4)]
    _, val = split_train_val()
    assert sum(len(s.indices) for s in shards) == 214 * 256        # 55000 // 256 batches
    for shard in shards:
        np.testing.assert_array_equal(shard.images, train_x[shard.indices])
        np.testing.assert_array_equal(shard.labels, train_y[shard.indices])
        assert not np.intersect1d(shard.indices, val).size
    x, y, idx = read_split(mnist_h5, "val")
    assert len(idx) == 5000
    np.testing.assert_array_equal(x, train_x[idx])
