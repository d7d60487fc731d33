"""The declarative model spec: validation, defaults, and layer construction.

A model is a list of layer tables, as written in a preset TOML:

    [[model]]
    type = "conv"
    out = 32
    kernel = 5
    pad = 2
    [[model]]
    type = "relu"

Each layer class declares its keys in `KEYS` as  key -> (type, default, check);  a default
of REQUIRED means the spec must give it, a default that names another key copies that
key's value (maxpool: stride defaults to kernel).  `normalize_spec` fills in every
default, so the stored spec (checkpoints, metrics) says exactly what was built and resume
can compare architectures with `==`.  Any mistake is a ValueError of one line naming the
layer index, its type and the key, e.g.

    layer 3 (conv): 'kernel' must be a positive int, got -1

Defaults:  dense {out}; conv {out, kernel, stride=1, pad=0}; maxpool {kernel=2,
stride=kernel}; dropout {p=0.5}; batchnorm {momentum=0.1, eps=1e-5}; relu, sigmoid, tanh,
flatten take no keys; deskew {before_augment=false}.  Tested by tests/test_core_spec.py.

`memory_per_layer` bounds the bytes a model will take, layer by layer, from the shapes alone
(nothing allocated), so a layer of 10^9 units is refused by name before any array exists.
"""
import math

import numpy as np

from core.conv import Conv2D, MaxPool2D
from core.deskew import Deskew
from core.layers import REQUIRED, Dense, Dropout, Flatten, ReLU, Sigmoid, Tanh
from core.norm import BatchNorm

LAYER_TYPES = {cls.type_name: cls for cls in
               (Dense, Conv2D, MaxPool2D, ReLU, Sigmoid, Tanh, Dropout, BatchNorm, Flatten,
                Deskew)}

# check name -> (predicate, description); the description is completed with the type.
CHECKS = {
    "positive": (lambda v: v > 0, "must be a positive {kind}"),
    "nonnegative": (lambda v: v >= 0, "must be a non-negative {kind}"),
    "probability": (lambda v: 0 <= v < 1, "must be a {kind} in [0, 1)"),
    "fraction": (lambda v: 0 <= v <= 1, "must be a {kind} in [0, 1]"),
    "flag": (lambda v: True, "must be a {kind}"),     # a bool: its type check is the check
}


def _typed(where, key, value, kind):
    """Check the TOML type (bool is not an int; an int is accepted as a float)."""
    if kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{where}: {key!r} must be true or false, got {value!r}")
        return bool(value)
    if kind is int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{where}: {key!r} must be an int, got {value!r}")
        return int(value)
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)):
        raise ValueError(f"{where}: {key!r} must be a finite float, got {value!r}")
    return float(value)


def normalize_layer(index, raw):
    """One layer spec with every default filled in; ValueError on any mistake."""
    if not isinstance(raw, dict):
        raise ValueError(f"layer {index}: expected a table with a 'type' key, got {raw!r}")
    known = ", ".join(LAYER_TYPES)
    if "type" not in raw:
        raise ValueError(f"layer {index}: missing 'type' (one of: {known})")
    kind = raw["type"]
    if not isinstance(kind, str) or kind not in LAYER_TYPES:
        raise ValueError(f"layer {index}: unknown type {kind!r} (one of: {known})")
    cls = LAYER_TYPES[kind]
    where = f"layer {index} ({kind})"
    for key in raw:
        if key != "type" and key not in cls.KEYS:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(cls.KEYS) or 'none'})")
    out = {"type": kind}
    for key, (typ, default, check) in cls.KEYS.items():
        if key in raw:
            value = _typed(where, key, raw[key], typ)
        elif default is REQUIRED:
            raise ValueError(f"{where}: missing required key {key!r}")
        elif isinstance(default, str):           # "same as that key"
            value = out[default]
        else:
            value = default
        ok, description = CHECKS[check]
        if not ok(value):
            raise ValueError(f"{where}: {key!r} {description.format(kind=typ.__name__)}, got {value!r}")
        out[key] = value
    return out


def normalize_spec(spec):
    """The whole spec (list of layer tables) normalized; JSON-serializable. Normalizing is
    idempotent, and a spec saved by older code, before a key with a default existed, comes
    out as it would be written now: compare specs after normalizing both."""
    if not isinstance(spec, (list, tuple)) or len(spec) == 0:
        raise ValueError(f"model spec must be a non-empty list of layer tables, got {spec!r}")
    return [normalize_layer(i, raw) for i, raw in enumerate(spec)]


def check_input_shape(input_shape):
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
                            for d in shape):
        raise ValueError(f"input_shape must be a tuple of positive ints, got {input_shape!r}")
    return tuple(int(d) for d in shape)


def build_layers(spec, input_shape):
    """(normalized spec, list of Layer objects).  Shape errors name the layer too."""
    spec = normalize_spec(spec)
    shape = check_input_shape(input_shape)
    layers = []
    for i, s in enumerate(spec):
        keys = {k: v for k, v in s.items() if k != "type"}
        layer = LAYER_TYPES[s["type"]](i, shape, **keys)
        layers.append(layer)
        shape = layer.out_shape
    return spec, layers


# Floats kept per trainable parameter: theta, grad, momentum, the optimizer's scratch, the
# weight-decay and batch-norm masks and the optimizer's lr scale, when it has one
# (core/model.py, core/optim.py).
FLOATS_PER_PARAM = 7
# Floats per activation element during a training step: the layer's cached output, the
# gradient flowing back, and a buffer of the same size (bounds what each layer allocates).
FLOATS_PER_ACTIVATION = 3


def memory_per_layer(layers, batch, itemsize=4):
    """Upper bound of the bytes each built layer needs in a training step of `batch` samples:
    its parameters (with their gradient and optimizer state) and its activations, including
    a convolution's im2col matrix (Ho*Wo rows of k*k*Cin values per sample).  [int per layer]"""
    sizes = []
    for layer in layers:
        params = sum(int(np.prod(s)) for s in layer.param_shapes.values())
        per_sample = int(np.prod(layer.out_shape))
        if layer.type_name == "conv":                             # the im2col buffer
            per_sample += layer.ho * layer.wo * layer.k * layer.k * layer.input_shape[2]
        sizes.append(itemsize * (FLOATS_PER_PARAM * params
                                 + FLOATS_PER_ACTIVATION * batch * per_sample))
    return sizes
