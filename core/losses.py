"""Losses: each returns (loss, dL/doutputs) for a LOCAL batch, divided by a GLOBAL count.

    loss = (sum over the local samples of the per-sample loss) / divisor

The training loop passes the global batch size as `divisor`, so that summing the losses
and gradients of all ranks (the allreduce) gives exactly the mean over the global batch --
the same number a single process computes.  The local batch may be empty.

- softmax_cross_entropy: softmax and cross-entropy fused, because the gradient of the
  pair is simply (softmax(z) - onehot(y)) / divisor; computed with log-sum-exp after
  subtracting the row max, so no exp overflows.
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


def softmax_cross_entropy(logits, labels, divisor):
    """Fused softmax + cross-entropy.  logits (B, K), labels int (B,) -> (loss, dlogits)."""
    labels = _check(logits, labels, divisor)
    rows = np.arange(len(labels))
    z = logits - logits.max(axis=1, keepdims=True)         # (B, K), max entry is 0
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)                       # (B, 1), >= 1
    # -log p[label] = log(sum e^z) - z[label]
    loss = float(np.sum(np.log(s[:, 0]) - z[rows, labels], dtype=np.float64)) / divisor
    dlogits = e / s                                        # softmax
    dlogits[rows, labels] -= 1                             # - onehot
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
