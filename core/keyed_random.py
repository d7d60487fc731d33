"""Counter-based random numbers keyed by *global sample index*, never by rank.

Why not `np.random.default_rng`?  A generator has hidden state that advances with every
draw, so the numbers a sample gets depend on how many draws happened before it -- i.e. on
which rank holds it and in what order.  Here every random number is a pure function

    u = hash(seed, epoch, global_index, stream, position)

so sample 4711 gets the same dropout mask and the same augmentation whether it is
processed by rank 0 of 1 or rank 3 of 4, and a resumed run needs no RNG state at all.

The hash is splitmix64 (Steele, Lea & Flood 2014; the seeding generator of xoshiro):
its finalizer `_mix` is a bijection of 64-bit integers with good avalanche, and the
sequence `mix(key + k * GOLDEN)`, k = 1, 2, ... is exactly the splitmix64 stream started
at `key`.  Everything is vectorized uint64 numpy arithmetic (multiplication wraps mod
2**64, which is what we want); there is no Python loop over samples.

Streams: a Dropout layer uses its index in the model as its stream (0, 1, 2, ...).
Other users (e.g. data augmentation) should pick streams far away (>= 1000).

    python -c "from core.keyed_random import *; import numpy as np; \
               print(keyed_uniform(sample_keys(0, 0, np.arange(3)), 0, (4,)))"
Tested by tests/test_core_keyed_random.py.
"""
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)   # 2**64 / golden ratio, splitmix64's increment
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SEED_SALT = np.uint64(0x5EED5EED5EED5EED)
_EPOCH_SALT = np.uint64(0xE90C4E90C4E90C4E)
_STREAM_SALT = np.uint64(0x57AEA457AEA457AE)


def _mix(z):
    """splitmix64 finalizer on a uint64 array (returns a new array)."""
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def _u64(value, name):
    """A Python int as a 1-element uint64 array (arrays wrap silently; numpy scalars warn)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return np.array([int(value) % 2**64], dtype=np.uint64)


def sample_keys(seed, epoch, indices):
    """One uint64 key per sample: a hash of (seed, epoch, global sample index).

    indices: int array (B,) of *global* sample indices.  Returns uint64 (B,).
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
        raise ValueError(f"indices must be a 1-D int array, got shape {idx.shape} dtype {idx.dtype}")
    base = _mix(_u64(seed, "seed") ^ _SEED_SALT)            # (1,)
    base = _mix(base ^ (_u64(epoch, "epoch") * _GOLDEN + _EPOCH_SALT))
    # Each index is one step of a splitmix64 stream started at `base`, then mixed again
    # so that neighbouring indices get unrelated keys.
    return _mix(_mix(base + idx.astype(np.uint64) * _GOLDEN))  # (B,)


def keyed_bits(keys, stream, n):
    """uint64 (B, n): element (b, j) = splitmix64 output j+1 of the stream (keys[b], stream)."""
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.ndim != 1:
        raise ValueError(f"keys must be a 1-D uint64 array, got shape {keys.shape}")
    s = _mix(_u64(stream, "stream") ^ _STREAM_SALT)                       # (1,)
    start = (keys ^ s)[:, None]                                            # (B, 1)
    steps = np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN                 # (n,)
    return _mix(start + steps)                                             # (B, n)


def keyed_uniform(keys, stream, shape):
    """float32 (B, *shape) uniform in [0, 1).

    Element (b, j) (j = flat position in `shape`) depends only on keys[b], stream and j,
    so a sample's numbers do not change with the batch it sits in. Each 64-bit hash gives
    two numbers (j uses half j % 2 of output j // 2 + 1): the hash is the costly part, and
    dropout asks for one number per activation.
    """
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=np.int64))
    bits = keyed_bits(keys, stream, (n + 1) // 2)                           # (B, ceil(n/2))
    # Little-endian 32-bit halves (a no-op view on x86 and ARM; explicit so that every
    # machine draws the same numbers).
    halves = bits.astype("<u8", copy=False).view("<u4")[:, :n]              # (B, n)
    # Top 24 bits of each half -> exactly representable float32 in [0, 1 - 2**-24].
    u = (halves >> np.uint32(8)).astype(np.float32)
    u *= np.float32(2.0 ** -24)
    return u.reshape((len(bits),) + shape)


class KeyedNoise:
    """The `noise(stream, shape)` callable that Model.forward expects, for the samples of
    `keys`; `rows(sel)` is the same noise for the samples keys[sel] only (core/replicas.py
    gives each thread its rows: a sample's numbers do not depend on the rows drawn with it)."""

    def __init__(self, keys):
        self.keys = keys

    def __call__(self, stream, shape):
        return keyed_uniform(self.keys, stream, shape)

    def rows(self, sel):
        return KeyedNoise(self.keys[sel])


def keyed_noise(seed, epoch, indices):
    """The noise for these samples (global indices) of this epoch: a KeyedNoise."""
    return KeyedNoise(sample_keys(seed, epoch, indices))
