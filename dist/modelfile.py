"""The one contract a checkpoint, model file or ensemble member meets wherever it is read.

``dist.checkpoint.load_checkpoint`` calls ``check_contents`` on every file it loads, so resume
(dist.train), export (dist.checkpoint), evaluation (dist.evaluate), ensembles (dist.ensemble),
prediction (launch.predict) and the page (launch.serve) refuse exactly the same files, each with
one line naming the file and the field -- before anything is computed or written from it:

- ``spec``: every layer a known type with valid keys, the network ends in the 10 class scores,
  and the parameter and statistic counts it implies are the sizes of /theta and /state (a spec
  that does not match theta would load the weights into the wrong layers);
- ``config``: ``model.loss`` a known loss (it turns outputs into probabilities),
  ``model.layers`` the same network as ``spec``, ``data.split_seed``/``data.val_size``
  non-negative integers (evaluation draws its split with them);
- ``data_fingerprint``: a SHA-256 hex string (data/checksums.py), so that comparing it with a
  data file's means something;
- /theta, /state and the moving average finite, and every batch-norm running variance >= 0
  (a negative one is a square root of a negative number at the first image);
- ``checksum``: the SHA-256 of every dataset and attribute, written with the file
  (``digest``). Bytes flipped in a weight leave a finite, plausible file that predicts
  something else; only a checksum notices. Files written before it existed have none and are
  read as before.

Whether a file was trained on *the data at hand* is a question of the reader, not of the file:
``dist.checkpoint.check_compatible`` compares fingerprints where a figure depends on it
(dist.evaluate, dist.ensemble's combine, the training loop).
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

from core.losses import LOSSES
from core.spec import build_layers, normalize_spec
from dist.errors import ExpectedError

INPUT_SHAPE = (28, 28, 1)
CLASSES = 10
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
CHECKSUM = "checksum"    # the attribute holding digest()


def digest(attrs: dict, arrays: dict) -> str:
    """SHA-256 of a file's datasets and attributes (all but the checksum itself), as they read
    back from HDF5: the writer computes it from the file it has just written, the reader from
    what it loaded, so both see the same types."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        if arrays[name] is not None:
            value = np.ascontiguousarray(arrays[name])
            h.update(f"/{name} {value.dtype.str} {value.shape}\n".encode())
            h.update(memoryview(value).cast("B"))
    for key in sorted(k for k in attrs if k != CHECKSUM):
        value = attrs[key]
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, bytes):
            array = np.asarray(value)
            value = f"{array.dtype.str} {array.shape} ".encode() + array.tobytes()
        h.update(f"@{key} {len(value)}\n".encode())
        h.update(value)
    return h.hexdigest()


def check_contents(path, spec, config: dict, fingerprint: str, arrays: dict,
                   attrs: dict) -> list:
    """Refuse a file whose contents break the contract (module docstring); returns the spec
    normalized. ``arrays``: theta, state (and velocity, ema_theta, ema_state, or None)."""
    layers_spec, layers = _network(path, spec)
    theta, state = arrays["theta"], arrays["state"]
    n_params = sum(int(np.prod(s)) for layer in layers for s in layer.param_shapes.values())
    n_state = sum(int(np.prod(s)) for layer in layers for s in layer.state_shapes.values())
    if (theta.size, state.size) != (n_params, n_state):
        raise ExpectedError(f"{path}: /theta has {theta.size:,} values and /state {state.size:,}, "
                            f"but its attribute spec ({len(layers)} layers) needs {n_params:,} "
                            f"and {n_state:,}")
    _check_config(path, config, layers_spec)
    if not isinstance(fingerprint, str) or not FINGERPRINT.fullmatch(fingerprint):
        raise ExpectedError(f"{path}: attribute data_fingerprint={str(fingerprint)[:70]!r} is "
                            "not a SHA-256 hex string")
    for name, values in arrays.items():
        if values is not None and not np.isfinite(values).all():
            raise ExpectedError(f"{path}: /{name} contains NaN or inf")
    for name in ("state", "ema_state"):
        if arrays.get(name) is not None:
            _check_variances(path, name, arrays[name], layers)
    recorded = attrs.get(CHECKSUM)
    if recorded is not None:   # last: a specific field above says more than "checksum"
        recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
        if recorded != digest(attrs, arrays):
            raise ExpectedError(f"{path}: attribute checksum does not match the file's contents "
                                "(damaged, or edited after it was written); use another copy")
    return layers_spec


def _network(path, spec) -> tuple[list, list]:
    """The normalized spec and its layers, built from shapes alone (no weights allocated)."""
    try:
        layers_spec, layers = build_layers(spec, INPUT_SHAPE)
    except (ValueError, TypeError, KeyError) as err:   # core/ names the layer and the key
        raise ExpectedError(f"{path}: attribute spec: {err}") from None
    if layers[-1].out_shape != (CLASSES,):
        raise ExpectedError(f"{path}: attribute spec: the last layer outputs "
                            f"{layers[-1].out_shape}, not the {CLASSES} class scores")
    return layers_spec, layers


def _check_config(path, config: dict, layers_spec: list) -> None:
    model, data = config.get("model"), config.get("data", {})
    if not isinstance(model, dict) or not isinstance(data, dict):
        raise ExpectedError(f"{path}: attribute config: 'model' and 'data' must be tables")
    loss = model.get("loss")
    if loss not in LOSSES:
        raise ExpectedError(f"{path}: attribute config: model.loss={loss!r} is not a known loss "
                            f"({', '.join(sorted(LOSSES))})")
    if "layers" in model:
        try:
            same = normalize_spec(model["layers"]) == layers_spec
        except (ValueError, TypeError, KeyError):
            same = False
        if not same:
            raise ExpectedError(f"{path}: attribute config: model.layers is not the network of "
                                "attribute spec")
    for key in ("split_seed", "val_size"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ExpectedError(f"{path}: attribute config: data.{key}={value!r} must be an "
                                "integer >= 0")


def _check_variances(path, name: str, state: np.ndarray, layers: list) -> None:
    """Each batch-norm layer's running_var slice of /state (or /ema_state) is >= 0."""
    offset = 0
    for layer in layers:
        for key, shape in layer.state_shapes.items():
            n = int(np.prod(shape))
            if key == "running_var" and (state[offset:offset + n] < 0).any():
                raise ExpectedError(f"{path}: /{name}: layer {layer.index} ({layer.type_name}) "
                                    "has a negative running variance")
            offset += n
