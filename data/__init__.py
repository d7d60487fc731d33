"""mpigrad's data layer: MNIST acquisition, verification, the HDF5 file, per-epoch shards.

What the training command uses (all importable from `data`):

    ensure_dataset(path=None, source=None, quiet=False, force=False) -> Path
        rank 0, before training: prepare the HDF5 file if missing, validate it if present
    open_mnist(path, deep=False).fingerprint
        the data fingerprint to store in (and check against) checkpoints
    read_epoch_shard(path, seed, epoch, rank, size, batch_size, split_seed=0, val_size=5000)
        -> Shard(images, labels, indices, batch_offsets); local batch k: shard.batch(k)
    steps_per_epoch(n_train_samples, batch_size), split_train_val(split_seed, val_size, n_train)
    read_split(path, "val" | "test", split_seed=0, val_size=5000) -> (images, labels, indices)
    normalize(images_uint8) -> float32 (B, 28, 28, 1); MEAN, STD
    DataError: every user-fixable data problem, with a one-line message

Modules, bottom up: errors, checksums, idx, verify, download, wheel, sources, hdf5, shards,
prepare. `python -m data.prepare --help` is the command-line entry point.
"""

import importlib

# Names are resolved lazily (PEP 562) rather than imported here: an eager
# `from .prepare import ...` would make `python -m data.prepare` find its own module already
# imported and warn, and `python -m data.idx` would pay for h5py it does not use.
_API = {
    "DataError": "errors", "MnistInfo": "hdf5", "open_mnist": "hdf5", "read_arrays": "hdf5",
    "default_path": "prepare", "ensure_dataset": "prepare",
    "MEAN": "shards", "STD": "shards", "Shard": "shards", "epoch_permutation": "shards",
    "local_batch_positions": "shards", "normalize": "shards", "read_epoch_shard": "shards",
    "read_split": "shards", "split_train_val": "shards", "steps_per_epoch": "shards",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
