"""Layers, part 1: the Layer interface, Dense, the activations, Dropout and Flatten.

Every layer follows one small contract (backprop's equations, one layer at a time):

    forward(x, train)  -> y    caches what backward needs (only when train=True)
    backward(dy)       -> dx   WRITES (=, never +=) its parameter gradients into its grad
                               views and returns dL/dx (None when `need_dx` is False,
                               which the model sets on its first layer: nobody needs dL/dimage).
                               It may overwrite dy and return it as dx: the model owns every
                               gradient array (Model.backward copies dout), and reusing it
                               saves a pass over memory and a fresh allocation per layer.

Parameters are not owned by the layer.  The Model allocates one flat `theta` and one flat
`grad` and hands each layer reshaped *views* into them via `bind`; the layer reaches them
as attributes (`self.W`, `self.dW`, ...).  Updating in place (`self.W[...] = ...`) keeps
the aliasing; rebinding (`self.W = self.W - ...`) would silently break it.

Shapes are per sample in `input_shape`/`out_shape` (no batch dimension) and carry the
batch dimension B first in the arrays: (B, F) for features, (B, H, W, C) for images.

Conv2D and MaxPool2D live in core/conv.py, BatchNorm in core/norm.py; spec validation
and the type registry in core/spec.py.  Tested by tests/test_core_gradcheck.py.
"""
import numpy as np

REQUIRED = object()   # marker in KEYS: the spec must give this key


def column_sum(a, out):
    """out (C,) = sum of the rows of a (N, C): a product with a vector of ones, which BLAS
    streams through in one pass (numpy's reduction along axis 0 is slower, see
    launch/docs/benchmarks.md).  Used for the biases' gradients: db = sum over rows of dy."""
    return np.matmul(np.ones(len(a), a.dtype), a, out=out)


def per_channel(v, p, dtype=None):
    """A (C,) vector of per-channel values repeated for P positions: (P*C,), to broadcast over
    activations seen as rows (B, P*C), one sample a row.  Against a (C,) vector on (B*P, C)
    numpy's inner loop would restart every C numbers; on long rows it runs at full speed."""
    return np.tile(np.asarray(v, dtype), p)


CHUNK_ELEMENTS = 2 ** 18   # numbers in a chunk of samples: 1 MB of float32, ~ a core's L2 cache


def sample_chunks(batch, per_sample):
    """(start, stop) ranges of the batch's samples, each holding ~CHUNK_ELEMENTS numbers of an
    array with `per_sample` numbers a sample.  A layer that makes several passes over its
    data makes them chunk by chunk: the second pass finds the chunk still in the cache
    instead of reading it back from memory."""
    n = max(1, CHUNK_ELEMENTS // max(int(per_sample), 1))
    return [(i, min(i + n, batch)) for i in range(0, batch, n)]


class Layer:
    """Base class: bookkeeping shared by all layers."""
    type_name = "layer"
    KEYS = {}            # spec schema: key -> (python type, default, check name); see core/spec.py
    decay = ()           # names of params that get weight decay (weights, not biases)
    needs_noise = False  # Dropout: forward takes a `noise` callable

    def __init__(self, index, input_shape):
        self.index = index                    # position in the model; Dropout's noise stream
        self.input_shape = tuple(input_shape)
        self.param_shapes = {}                # trainable: name -> shape
        self.state_shapes = {}                # non-trainable (BN running stats)
        self.params, self.grads, self.state = {}, {}, {}
        self.need_dx = True

    def fail(self, message):
        """Raise the one-line user error for a bad spec value of this layer."""
        raise ValueError(f"layer {self.index} ({self.type_name}): {message}")

    # --- arena binding: views into the model's flat vectors -------------------------
    def bind(self, name, value, grad):
        self.params[name], self.grads[name] = value, grad
        setattr(self, name, value)          # e.g. self.W
        setattr(self, "d" + name, grad)     # e.g. self.dW

    def bind_state(self, name, value):
        self.state[name] = value
        setattr(self, name, value)          # e.g. self.running_mean

    def _buffer(self, name, shape, dtype, zero=False):
        """A work array kept from call to call while its shape stays the same: a fresh array
        of several MB costs page faults on every step, which take longer than the arithmetic
        on it.  (zero=True: made with zeros, for buffers whose border is never written.)"""
        buf = self.__dict__.get("_buf_" + name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = (np.zeros if zero else np.empty)(shape, dtype)
            self.__dict__["_buf_" + name] = buf
        return buf

    # --- shapes and cost ---------------------------------------------------------------
    @property
    def out_shape(self):
        return self.output_shape(self.input_shape)

    def output_shape(self, input_shape):
        return tuple(input_shape)            # elementwise layers keep the shape

    def flops(self, input_shape):
        """Forward FLOPs per sample (multiply-add = 2).  Elementwise layers: 1 per element,
        a nominal count -- they are memory-bound and tiny next to the GEMMs."""
        return int(np.prod(input_shape))

    def fans(self):
        """(fan_in, fan_out) of the weight "W", for initialization."""
        raise NotImplementedError

    def forward(self, x, train):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError


class Dense(Layer):
    """Fully connected: y = x W + b, with W (F, O).  Backward, for the batch's dy = dL/dy:

        dW = x^T dy        db = sum over the batch of dy        dx = dy W^T
    """
    type_name = "dense"
    KEYS = {"out": (int, REQUIRED, "positive")}
    decay = ("W",)

    def __init__(self, index, input_shape, out):
        super().__init__(index, input_shape)
        if len(self.input_shape) != 1:
            self.fail(f"input has shape {self.input_shape}, not flat; "
                      "add {type = \"flatten\"} before this layer")
        self.out = out
        self.param_shapes = {"W": (self.input_shape[0], out), "b": (out,)}

    def output_shape(self, input_shape):
        return (self.out,)

    def flops(self, input_shape):
        return 2 * int(input_shape[0]) * self.out + self.out     # GEMM + bias

    def fans(self):
        return self.input_shape[0], self.out

    def forward(self, x, train):             # x (B, F)
        self.x = x if train else None
        return x @ self.W + self.b           # (B, F) @ (F, O) + (O,) -> (B, O)

    def backward(self, dy):                  # dy (B, O)
        np.matmul(self.x.T, dy, out=self.dW)  # dW = x^T dy: (F, B) @ (B, O) -> (F, O)
        column_sum(dy, out=self.db)           # db = sum over the batch of dy: (O,)
        return dy @ self.W.T if self.need_dx else None   # dx: (B, O) @ (O, F) -> (B, F)


class ReLU(Layer):
    """y = max(x, 0); dy passes where x > 0.  After a BatchNorm the Model sets `done_before`:
    the BatchNorm has applied the ReLU already (in the same pass, core/norm.py), and this
    layer passes x and dy through untouched."""
    type_name = "relu"
    done_before = False

    def forward(self, x, train):
        if self.done_before:
            return x
        y = np.maximum(x, 0)                  # 0 is a Python int: stays float32
        self.y = y if train else None         # y > 0 exactly where x > 0; the next layer
        return y                              # holds y anyway, so caching it is free

    def backward(self, dy):
        if self.done_before:
            return dy
        # In place, with a reused mask: no fresh arrays.  (A masked copyto(where=) looks
        # cheaper but branches per element: several times slower on real, half-off masks.)
        on = self._buffer("on", dy.shape, np.bool_)
        np.greater(self.y, 0, out=on)
        return np.multiply(dy, on, out=dy)


class Sigmoid(Layer):
    """y = 1 / (1 + e^-x), written as (1 + tanh(x/2)) / 2, which never overflows."""
    type_name = "sigmoid"

    def forward(self, x, train):
        y = np.tanh(x * 0.5)
        y += 1
        y *= 0.5
        self.y = y if train else None
        return y

    def backward(self, dy):
        return dy * self.y * (1 - self.y)     # sigma' = sigma (1 - sigma)


class Tanh(Layer):
    type_name = "tanh"

    def forward(self, x, train):
        y = np.tanh(x)
        self.y = y if train else None
        return y

    def backward(self, dy):
        return dy * (1 - self.y * self.y)     # tanh' = 1 - tanh^2


class Dropout(Layer):
    """Inverted dropout: keep each unit with probability 1-p and scale it by 1/(1-p), so
    eval mode is the identity.  The mask comes from `noise(stream=self.index, shape)`, a
    function of the *global* sample index (core/keyed_random.py), never of the rank.
    In train mode with p > 0 and no noise it raises: a silent fallback generator would
    break the world-size invariance without anybody noticing."""
    type_name = "dropout"
    KEYS = {"p": (float, 0.5, "probability")}
    needs_noise = True

    def __init__(self, index, input_shape, p):
        super().__init__(index, input_shape)
        self.p = p

    def forward(self, x, train, noise=None):
        if not train or self.p == 0:
            self.mask = None
            return x
        if noise is None:
            raise ValueError(f"layer {self.index} (dropout): train mode needs noise; call "
                             "model.forward(x, train=True, noise=keyed_noise(seed, epoch, indices))")
        u = noise(self.index, self.input_shape)              # (B, *shape) in [0, 1)
        if u.shape != x.shape:
            raise ValueError(f"layer {self.index} (dropout): noise returned shape {u.shape}, "
                             f"expected {x.shape}")
        keep = u >= self.p                                   # P(keep) = 1 - p
        self.mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self.mask

    def backward(self, dy):
        return dy if self.mask is None else dy * self.mask

    def flops(self, input_shape):
        return int(np.prod(input_shape))


class Flatten(Layer):
    """(B, H, W, C) -> (B, H*W*C), row-major (so NHWC order: channels fastest)."""
    type_name = "flatten"

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def flops(self, input_shape):
        return 0

    def forward(self, x, train):
        return x.reshape((len(x),) + self.out_shape)      # not -1: B may be 0

    def backward(self, dy):
        return dy.reshape((len(dy),) + self.input_shape)
