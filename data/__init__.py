"""mpigrad's data layer: MNIST acquisition, verification, the HDF5 file, per-epoch shards.

What the training command uses (import each from its module, e.g. `data.prepare`):

    ensure_dataset(path=None, source=None, quiet=False, force=False) -> Path
        rank 0, before training: prepare the HDF5 file if missing, validate it if present
    open_mnist(path, deep=False).fingerprint
        the data fingerprint to store in (and check against) checkpoints
    read_epoch_shard(path, seed, epoch, rank, size, batch_size, split_seed=0, val_size=5000)
        -> Shard(images, labels, indices, batch_offsets)
    steps_per_epoch(n_train_samples, batch_size), split_train_val(split_seed, val_size, n_train)
    read_split(path, "val" | "test", split_seed=0, val_size=5000) -> (images, labels, indices)
    training_input(images, keys, spec, data_cfg), evaluation_input(images, spec)
        uint8 (B, 28, 28) -> float32 network input (B, 28, 28, 1): data.pipeline
    DataError: every user-fixable data problem, with a one-line message (a UserError)

Modules, bottom up: errors, checksums, idx, verify, download, wheel, sources, hdf5, shards,
prepare; then pipeline, the path from uint8 images to network input. `python -m data.prepare
--help` is the command-line entry point.
"""
