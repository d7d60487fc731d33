"""The Model: a stack of layers built from a spec, with all parameters in one flat arena.

    from core.model import Model
    m = Model([{"type": "flatten"}, {"type": "dense", "out": 100}, {"type": "sigmoid"},
               {"type": "dense", "out": 10}, {"type": "sigmoid"}])
    print(m.summary())

The arena.  `theta` is ONE contiguous vector of every trainable number; `grad` has the
same layout; each layer's W, b (and dW, db) are reshaped views into them.  So the
allreduce of a step is one call on `grad`, the optimizer works on two flat vectors, and a
checkpoint stores a handful of arrays.  `state` holds the non-trainable BatchNorm running
statistics the same way.  Views must never be rebound -- tests/test_core_arena.py checks.
Two masks laid out like theta mark, with 1, the elements the optimizer treats apart:
`decay_mask` the weights (weight decay), `bn_mask` the BatchNorm gammas and betas (a
learning-rate scale of their own; core/optim.py).

Initialization (seeded by `seed` through np.random.default_rng): a weight followed --
possibly after batchnorm, maxpool, dropout or flatten -- by a ReLU gets He-normal,
std = sqrt(2 / fan_in); anything else (sigmoid, tanh, the final linear layer) gets
Glorot-normal, std = sqrt(2 / (fan_in + fan_out)).  Biases 0, BN gamma 1, beta 0,
running mean 0, running var 1.

Noise: `forward(x, train=True, noise=...)` needs `noise(stream, shape)` returning
float32 uniforms (B, *shape) when the model has dropout; each Dropout layer asks with its
own index as the stream.  Build it with core.keyed_random.keyed_noise(seed, epoch, idx).

Tested by tests/test_core_arena.py, tests/test_core_spec.py, tests/test_core_learns.py.
"""
import numpy as np

from core.norm import BatchNorm, identity_reduce
from core.spec import build_layers, check_input_shape

_ACTIVATIONS = ("relu", "sigmoid", "tanh")
_TRANSPARENT = ("batchnorm", "maxpool", "dropout", "flatten")   # skipped when looking for one


class Model:
    def __init__(self, spec, input_shape=(28, 28, 1), seed=0, dtype=np.float32, reduce=None,
                 theta=None):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.input_shape = check_input_shape(input_shape)
        self.seed = seed
        self.spec, self.layers = build_layers(spec, self.input_shape)
        self.output_shape = self.layers[-1].out_shape

        # --- the arena: one vector each for params, grads, the two masks, state -----------
        n_params = sum(int(np.prod(s)) for l in self.layers for s in l.param_shapes.values())
        n_state = sum(int(np.prod(s)) for l in self.layers for s in l.state_shapes.values())
        # theta=: another model's parameters, shared (a replica's; see replica()).
        if theta is not None and (theta.shape != (n_params,) or theta.dtype != self.dtype):
            raise ValueError(f"theta must be a ({n_params},) {self.dtype} vector, got "
                             f"{theta.shape} {theta.dtype}")
        self.theta = np.zeros(n_params, self.dtype) if theta is None else theta
        self.grad = np.zeros(n_params, self.dtype)
        self.decay_mask = np.zeros(n_params, self.dtype)
        self.bn_mask = np.zeros(n_params, self.dtype)
        self.state = np.zeros(n_state, self.dtype)
        p = s = 0
        self.param_offsets = []                 # where each layer's parameters begin in theta
        for layer in self.layers:
            self.param_offsets.append(p)
            for name, shape in layer.param_shapes.items():
                n = int(np.prod(shape))
                layer.bind(name, self.theta[p:p + n].reshape(shape), self.grad[p:p + n].reshape(shape))
                if name in layer.decay:
                    self.decay_mask[p:p + n] = 1
                if isinstance(layer, BatchNorm):
                    self.bn_mask[p:p + n] = 1
                p += n
            for name, shape in layer.state_shapes.items():
                n = int(np.prod(shape))
                layer.bind_state(name, self.state[s:s + n].reshape(shape))
                s += n

        # A ReLU right after a BatchNorm is applied by the BatchNorm, in the pass that writes
        # its output (core/norm.py); the ReLU layer then passes everything through.
        for layer, after in zip(self.layers, self.layers[1:]):
            if isinstance(layer, BatchNorm) and after.type_name == "relu":
                layer.relu = after.done_before = True

        # Backward stops at the first layer with parameters: nobody needs dL/dimage.
        with_params = [i for i, l in enumerate(self.layers) if l.param_shapes]
        self._first_param = with_params[0] if with_params else len(self.layers)
        self.reduce = reduce
        self._train_cache = False
        self._init_state()
        if theta is None:
            self._init_params(seed)

    # --- the cross-rank sum used by BatchNorm ----------------------------------------------
    @property
    def reduce(self):
        return self._reduce

    @reduce.setter
    def reduce(self, fn):
        self._reduce = identity_reduce if fn is None else fn
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                layer.reduce = self._reduce

    def replica(self):
        """Another copy of this network for another thread (core/replicas.py): the same
        parameters -- its W, b, ... are views of this model's theta -- but its own gradient
        arena, layer caches and batch-norm running statistics (only this model's count)."""
        return Model(self.spec, self.input_shape, self.seed, self.dtype, theta=self.theta)

    # --- initialization ------------------------------------------------------------------
    def _next_activation(self, i):
        for layer in self.layers[i + 1:]:
            if layer.type_name in _ACTIVATIONS:
                return layer.type_name
            if layer.type_name not in _TRANSPARENT:
                return None
        return None

    def _init_params(self, seed):
        rng = np.random.default_rng(seed)
        for i, layer in enumerate(self.layers):
            if "W" in layer.params:
                fan_in, fan_out = layer.fans()
                if self._next_activation(i) == "relu":
                    std = np.sqrt(2.0 / fan_in)                 # He et al. 2015
                else:
                    std = np.sqrt(2.0 / (fan_in + fan_out))     # Glorot & Bengio 2010
                layer.W[...] = rng.standard_normal(layer.W.shape) * std
            if "gamma" in layer.params:
                layer.gamma[...] = 1

    def _init_state(self):
        for layer in self.layers:
            if "running_var" in layer.state:
                layer.running_var[...] = 1

    # --- forward and backward --------------------------------------------------------------
    def forward(self, x, train, noise=None, after_layer=None):
        """x (B, *input_shape) -> outputs (B, *output_shape); train=True caches for backward.
        after_layer(layer, output), if given, is called after every layer (debug hooks:
        e.g. stop at the first layer that produces NaN)."""
        x = np.asarray(x)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"model input must have shape (B, {', '.join(map(str, self.input_shape))}), "
                             f"got {x.shape}")
        x = x.astype(self.dtype, copy=False)
        for layer in self.layers:
            x = layer.forward(x, train, noise) if layer.needs_noise else layer.forward(x, train)
            if after_layer is not None:
                after_layer(layer, x)
        self._train_cache = bool(train)
        return x

    def backward(self, dout, input_grad=False, grad_ready=None):
        """Fill ALL of self.grad (overwriting) from dL/doutputs of the last train forward.
        With input_grad=True also return dL/dx (gradient checks use it).

        grad_ready(p), if given, is called after each layer with parameters: from then on
        grad[p:] is final (backward runs from the last layer, whose parameters are at the end
        of the arena, to the first).  The training loop starts sending those gradients while
        the earlier layers are still being differentiated."""
        if not self._train_cache:
            raise RuntimeError("Model.backward needs a preceding forward(x, train=True)")
        d = np.array(dout, self.dtype)          # a copy: layers may overwrite their dy
        start = 0 if input_grad else self._first_param
        if self._first_param < len(self.layers):
            self.layers[self._first_param].need_dx = input_grad
        for i in reversed(range(start, len(self.layers))):
            layer = self.layers[i]
            d = layer.backward(d)
            if grad_ready is not None and layer.param_shapes:
                grad_ready(self.param_offsets[i])
        return d if input_grad else None

    # --- description ---------------------------------------------------------------------
    def describe(self):
        """Sizes and forward cost per sample; JSON-serializable."""
        layers = []
        for layer in self.layers:
            layers.append({"index": layer.index, "type": layer.type_name,
                           "out_shape": list(layer.out_shape),
                           "params": sum(int(np.prod(s)) for s in layer.param_shapes.values()),
                           "flops": int(layer.flops(layer.input_shape))})
        return {"input_shape": list(self.input_shape), "params": int(self.theta.size),
                "state": int(self.state.size),
                "flops_per_sample": sum(l["flops"] for l in layers), "layers": layers}

    def summary(self):
        """A printable table of describe()."""
        d = self.describe()
        rows = [f"{'#':>3}  {'layer':<10} {'output':<16} {'params':>10} {'FLOPs':>12}",
                f"{'':>3}  {'input':<10} {str(tuple(d['input_shape'])):<16}"]
        for l in d["layers"]:
            rows.append(f"{l['index']:>3}  {l['type']:<10} {str(tuple(l['out_shape'])):<16} "
                        f"{l['params']:>10,} {l['flops']:>12,}")
        rows.append(f"total: {d['params']:,} params, {d['state']:,} state, "
                    f"{d['flops_per_sample']:,} FLOPs/sample forward")
        return "\n".join(rows)
