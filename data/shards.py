"""Which training samples each MPI rank sees, and reading exactly those from the HDF5 file.

Everything here is a pure function of integers -- seeds, epoch, rank, world size, batch size
-- so every rank computes the same plan without talking to the others, and a run can be
resumed or repeated bit for bit.

The plan for epoch e, with B the global batch size and n ranks:

    split_train_val      a fixed, seeded set of validation rows is set aside from /train;
                         the remaining `train_idx` (sorted) are the training samples
    epoch_permutation    P_e = train_idx shuffled by an RNG keyed by (seed, e)
    global batch k       P_e[k*B:(k+1)*B], for k < steps_per_epoch = len(P_e) // B
                         (drop_last: the incomplete tail batch is skipped this epoch -- it
                         differs every epoch, so no sample is skipped for good)
    rank r's part        P_e[k*B:(k+1)*B][r::n], every n-th sample of the global batch

So a global batch is the same set of samples whatever n is (world-size invariance, see
DESIGN.md), and local batch sizes differ by at most one. A rank's `Shard` is its parts of all
global batches of the epoch, concatenated in batch order, read at the start of the epoch.

Reading: h5py's fancy indexing (`ds[sorted_list]`) builds a selection row by row and is slow
for tens of thousands of scattered rows. Reading the file in contiguous blocks of whole chunks
and picking this rank's rows from each block is tens of times faster (launch/docs/benchmarks.md).
It holds only the shard plus one block (6.4 MB) in memory, and reads every byte of the file
once at most.

Run `python -m data.shards FILE` to time both reading methods on a prepared file.
"""

import sys
import time
from dataclasses import dataclass

import numpy as np

from .hdf5 import CHUNK_ROWS, open_h5

SPLIT_TAG = 0x56414C                # "VAL": keeps the split's RNG stream apart from epochs'
BLOCK_ROWS = 8 * CHUNK_ROWS         # rows per contiguous read: 6.4 MB of images


def split_train_val(split_seed: int = 0, val_size: int = 5000,
                    n_train: int = 60000) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted int64 row indices of /train: (train_idx, val_idx), fixed by split_seed."""
    if not 0 <= val_size < n_train:
        raise ValueError(f"val_size {val_size} must be in [0, {n_train})")
    rng = np.random.default_rng([SPLIT_TAG, split_seed])
    is_val = np.zeros(n_train, dtype=bool)
    is_val[rng.permutation(n_train)[:val_size]] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def epoch_permutation(seed: int, epoch: int, train_idx: np.ndarray) -> np.ndarray:
    """P_e: the training indices in the order of epoch `epoch`, keyed by (seed, epoch) only."""
    rng = np.random.default_rng([seed, epoch])
    return np.asarray(train_idx, dtype=np.int64)[rng.permutation(len(train_idx))]


def steps_per_epoch(n_train_samples: int, batch_size: int) -> int:
    """Number of full global batches in an epoch (drop_last). The batch size is checked
    against the training set and the ranks where it enters (dist/config.py)."""
    return n_train_samples // batch_size


def local_batch_positions(batch_size: int, rank: int, size: int) -> np.ndarray:
    """Positions within a global batch that rank `rank` of `size` takes: rank, rank+size, ..."""
    return np.arange(rank, batch_size, size, dtype=np.int64)


@dataclass
class Shard:
    """One rank's samples for one epoch; local batch k is rows offsets[k]:offsets[k+1]."""

    images: np.ndarray          # (m, 28, 28) uint8
    labels: np.ndarray          # (m,) uint8
    indices: np.ndarray         # (m,) int64, global row indices into /train
    batch_offsets: np.ndarray   # (steps + 1,) int64

    @property
    def steps(self) -> int:
        return len(self.batch_offsets) - 1


def shard_indices(seed: int, epoch: int, rank: int, size: int, batch_size: int,
                  train_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plan without the reading: (indices, batch_offsets) of rank's shard."""
    order = epoch_permutation(seed, epoch, train_idx)
    steps = steps_per_epoch(len(order), batch_size)
    positions = local_batch_positions(batch_size, rank, size)
    batches = order[:steps * batch_size].reshape(steps, batch_size)   # (steps, B)
    indices = batches[:, positions].reshape(-1)                       # batch order kept
    offsets = np.arange(steps + 1, dtype=np.int64) * len(positions)
    return indices, offsets


def read_rows(dataset, indices: np.ndarray) -> np.ndarray:
    """dataset[indices] for arbitrary (unsorted, repeated) indices, by contiguous blocks."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty((len(indices),) + dataset.shape[1:], dtype=dataset.dtype)
    order = np.argsort(indices, kind="stable")
    wanted = indices[order]                          # ascending
    block = np.empty((BLOCK_ROWS,) + dataset.shape[1:], dtype=dataset.dtype)
    # Only blocks that hold at least one wanted row are read.
    for start in np.unique(wanted // BLOCK_ROWS) * BLOCK_ROWS:
        stop = min(start + BLOCK_ROWS, dataset.shape[0])
        lo, hi = np.searchsorted(wanted, [start, stop])
        dataset.read_direct(block, np.s_[start:stop], np.s_[0:stop - start])
        out[order[lo:hi]] = block[wanted[lo:hi] - start]
    return out


def read_rows_fancy(dataset, indices: np.ndarray) -> np.ndarray:
    """The same with h5py fancy indexing (kept for the benchmark; slower)."""
    unique, inverse = np.unique(indices, return_inverse=True)
    return dataset[unique][inverse]


def read_epoch_shard(path, seed: int, epoch: int, rank: int, size: int, batch_size: int,
                     split_seed: int = 0, val_size: int = 5000) -> Shard:
    """Rank `rank` of `size`'s samples of epoch `epoch`, read from the prepared file `path`."""
    with open_h5(path) as f:
        images, labels = f["/train/images"], f["/train/labels"]
        train_idx, _ = split_train_val(split_seed, val_size, n_train=images.shape[0])
        indices, offsets = shard_indices(seed, epoch, rank, size, batch_size, train_idx)
        return Shard(read_rows(images, indices), read_rows(labels, indices), indices, offsets)


def read_split(path, name: str, split_seed: int = 0,
               val_size: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, indices) of the validation rows of /train ("val") or of /test."""
    with open_h5(path) as f:
        if name == "test":
            images = f["/test/images"][()]
            return images, f["/test/labels"][()], np.arange(len(images), dtype=np.int64)
        if name != "val":
            raise ValueError(f"split name {name!r} is not 'val' or 'test'")
        _, val_idx = split_train_val(split_seed, val_size, n_train=f["/train/images"].shape[0])
        return (read_rows(f["/train/images"], val_idx), read_rows(f["/train/labels"], val_idx),
                val_idx)


def benchmark(path, repeats: int = 3) -> None:
    """Time fancy indexing against block reads for 1/2 and 1/4 of the training rows."""
    with open_h5(path) as f:
        images = f["/train/images"]
        train_idx, _ = split_train_val(n_train=images.shape[0])
        for size in (2, 4):
            indices, _ = shard_indices(0, 0, 0, size, 256, train_idx)
            for name, reader in (("fancy", read_rows_fancy), ("blocks", read_rows)):
                best = min(_timed(reader, images, indices) for _ in range(repeats))
                print(f"1/{size} of the rows ({len(indices)}): {name:6s} {best * 1e3:7.1f} ms")
            assert np.array_equal(read_rows(images, indices), read_rows_fancy(images, indices))


def _timed(reader, dataset, indices) -> float:
    started = time.perf_counter()
    reader(dataset, indices)
    return time.perf_counter() - started


if __name__ == "__main__":
    benchmark(sys.argv[1])
