"""Losses: each returns (loss, dL/doutputs) for a LOCAL batch, divided by a GLOBAL count.

    loss = (sum over the local samples of the per-sample loss) / divisor

The training loop passes the global batch size as `divisor`, so that summing the losses
and gradients of all ranks (the allreduce) gives exactly the mean over the global batch --
the same number a single process computes.  The local batch may be empty.

- softmax_cross_entropy: softmax and cross-entropy fused, because the gradient of the
  pair is simply (softmax(z) - onehot(y)) / divisor; computed with log-sum-exp after
  subtracting the row max, so no exp overflows.  With label smoothing e (Szegedy et al.
  2016) the target is (1 - e) onehot(y) + e / K instead of onehot(y), K classes:

      loss = -(1 - e) log p_y - (e / K) sum_k log p_k,   dL/dz = p - (1 - e) onehot(y) - e / K

  so the network is never pushed to make one score infinitely larger than the others.
- mse: per-sample 0.5 * ||y - onehot(label)||^2 (the 1/2 of Nielsen's network.py, so the
  gradient is (y - onehot) / divisor), summed, divided by divisor.  Pair it with a sigmoid
  output layer for the classic net.

Tested by tests/test_core_gradcheck.py (both losses in float64).
"""
import numpy as np


def _check(outputs, labels, divisor):
    if not divisor > 0:
        raise ValueError(f"loss: divisor (the global batch size) must be > 0, got {divisor!r}")
    if outputs.ndim != 2:
        raise ValueError(f"loss: outputs must be (B, K), got shape {outputs.shape}")
    labels = np.asarray(labels)
    if labels.shape != (outputs.shape[0],):
        raise ValueError(f"loss: labels must have shape ({outputs.shape[0]},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= outputs.shape[1]):
        raise ValueError(f"loss: labels must be in [0, {outputs.shape[1]}), "
                         f"got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.intp, copy=False)


def softmax(logits):
    """Row-wise softmax (stable: the row max is subtracted first).  (B, K) -> (B, K)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def softmax_cross_entropy(logits, labels, divisor, smoothing=0.0):
    """Fused softmax + cross-entropy.  logits (B, K), labels int (B,) -> (loss, dlogits).
    smoothing: the label smoothing e in [0, 1) (see the module docstring)."""
    labels = _check(logits, labels, divisor)
    rows = np.arange(len(labels))
    z = logits - logits.max(axis=1, keepdims=True)         # (B, K), max entry is 0
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)                       # (B, 1), >= 1
    log_s = np.log(s[:, 0])                                # log p_k = z_k - log s
    # -log p[label] = log(sum e^z) - z[label]
    per_sample = log_s - z[rows, labels]
    dlogits = e / s                                        # softmax
    if smoothing:
        k = logits.shape[1]                                # - (1/K) sum_k log p_k
        uniform = log_s - z.sum(axis=1, dtype=np.float64) / k
        per_sample = (1 - smoothing) * per_sample + smoothing * uniform
        dlogits -= logits.dtype.type(smoothing / k)        # - e / K
        dlogits[rows, labels] -= logits.dtype.type(1 - smoothing)   # - (1 - e) onehot
    else:
        dlogits[rows, labels] -= 1                         # - onehot
    loss = float(np.sum(per_sample, dtype=np.float64)) / divisor
    dlogits *= logits.dtype.type(1.0 / divisor)
    return loss, dlogits


def mse(outputs, labels, divisor):
    """0.5 * ||y - onehot||^2 per sample, summed over the local batch, / divisor."""
    labels = _check(outputs, labels, divisor)
    diff = outputs.copy()                                  # (B, K) = y - onehot
    diff[np.arange(len(labels)), labels] -= 1
    loss = 0.5 * float(np.sum(diff * diff, dtype=np.float64)) / divisor
    diff *= outputs.dtype.type(1.0 / divisor)
    return loss, diff


LOSSES = {"xent": softmax_cross_entropy, "mse": mse}
