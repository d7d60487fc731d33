"""One process's cores as data-parallel replicas: n copies of the model, one per thread.

    from core.replicas import Replicas
    net = Replicas(model, 2)                    # model is copy 0; the others share its theta
    out = net.forward(x, train=True, noise=keyed_noise(seed, epoch, idx))   # (B, 10)
    loss, dout = softmax_cross_entropy(out, y, divisor=B)
    net.backward(dout)                          # model.grad: the gradient of the whole batch
    scores = net.forward(x, train=False)        # evaluation: each copy scores its rows

This is the only way core/ uses several cores.  Thread k runs the whole forward and backward
of its own rows of the batch, as rank k of n ranks would, and the threads meet only where
ranks meet: in batch norm's sums and in the gradient sum.  numpy releases the GIL inside its
copies, elementwise operations and matrix products, so n threads keep n cores busy with
all of the work, and each layer stays the plain numpy of its docstring.

The copies.  Copy 0 is the model itself; copy k is `model.replica()`: its parameters are views
of the model's theta, its gradient arena, layer caches and running statistics are its own
(only the model's count: in evaluation every copy takes the model's).
After backward the gradients are added into model.grad in copy order (each thread adds one
block of the arena), so the result is the same every run.

Batch norm.  Every copy's BatchNorm sums go through `_Sum`: the copies leave their vectors,
copy 0 adds them in copy order and passes the total to the model's own reduce (the sum over
ranks, on the calling thread: MPI is only ever called from there), and every copy reads the
result.  So the statistics are those of the whole global batch, as with ranks.

Arithmetic.  Copy k of n takes rows k, k + n, k + 2n, ... of the batch -- the rows rank k of n
would hold -- and computes what that rank computes.  So 1 process x 2 threads trains bit for
bit as 2 ranks x 1 thread do (tests/test_dist_invariance.py), and like one model up to float
rounding (tests/test_core_replicas.py).
An error in any copy ends the call in every copy (the barriers are broken) and is re-raised.

BLAS.  Each copy's products run on its own thread, so BLAS itself should use one:
`blas_on_one_thread()`.  OpenBLAS's threads also keep spinning for a while after each call,
which would take a core from the copies (launch/docs/benchmarks.md has the measurement).
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

_POOLS = {}           # n -> a pool of n - 1 threads, made once (the caller is thread 0)


def blas_on_one_thread():
    """This process's BLAS runs every product on the calling thread, for good: the
    parallelism comes from the copies (or the ranks), never from inside a product."""
    threadpool_limits(1, user_api="blas")


def run_threads(work, n: int):
    """work(k) for k in 0..n-1 at once: k = 0 on this thread, the others on a pool's threads.
    Waits for all of them, then re-raises the first error."""
    if n <= 1:
        return work(0)
    pool = _POOLS.get(n) or _POOLS.setdefault(n, ThreadPoolExecutor(n - 1))
    others = [pool.submit(work, k) for k in range(1, n)]
    try:
        work(0)
    finally:
        errors = [f.exception() for f in others]      # waits for every thread
    for error in errors:
        if error is not None:
            raise error


class _Sum:
    """The `reduce` of n copies: the sum over copies, then the model's own reduce (ranks)."""

    def __init__(self, n, outer):
        self.parts, self.outer, self.total = [None] * n, outer, None
        self.barrier = threading.Barrier(n)

    def of(self, k):
        def reduce(vector):
            self.parts[k] = np.array(vector, copy=True)
            self.barrier.wait()                      # every copy has left its part
            if k == 0:
                total = self.parts[0]
                for part in self.parts[1:]:         # in copy order: the same every run
                    total = total + part
                self.total = self.outer(total)       # the sum over ranks (MPI: this thread)
            self.barrier.wait()                      # the total is there
            return np.array(self.total, copy=True)
        return reduce


class Replicas:
    """n copies of `model`, each on one thread and 1/n of the rows of every batch."""

    def __init__(self, model, n: int):
        self.model = model
        self.copies = [model] + [model.replica() for _ in range(max(1, int(n)) - 1)]
        if len(self.copies) > 1:
            blas_on_one_thread()         # the copies are the parallelism, not BLAS's threads

    def _rows(self, b, train=True):
        """The rows of every active copy (at most b copies).  In training copy k of n takes
        rows k, k + n, k + 2n, ... -- the rows rank k of n ranks holds (data/shards.py deals
        them so); in evaluation, where no copy depends on another, one block of rows each
        (a view: no rows to copy)."""
        n = max(1, min(len(self.copies), b))
        if train:
            return [slice(k, None, n) for k in range(n)]
        return [slice(b * k // n, b * (k + 1) // n) for k in range(n)]

    def _run(self, rows, work):
        """work(k, rows[k]) for every active copy k, each on its own thread, with the copies'
        batch-norm reduce set to the sum over copies for the call."""
        n, outer = len(rows), self.model.reduce
        total = self.sum = _Sum(n, outer)
        for k in range(n):
            self.copies[k].reduce = total.of(k)
        errors = []

        def guarded(k):
            try:
                work(k, rows[k])
            except threading.BrokenBarrierError:     # another copy failed: its error counts
                raise
            except BaseException as error:
                errors.append(error)
                total.barrier.abort()                # the other copies stop waiting
                raise
        try:
            run_threads(guarded, n)
        except threading.BrokenBarrierError:
            if errors:
                raise errors[0] from None
            raise
        finally:
            for copy in self.copies:
                copy.reduce = outer

    def forward(self, x, train, noise=None):
        """x (B, 28, 28, 1) -> outputs (B, 10), as Model.forward: copy k computes rows k::n."""
        rows = self._rows(len(x), train)
        if len(rows) == 1:
            return self.model.forward(x, train, noise)
        if not train:                    # evaluation uses the running statistics: the model's
            for copy in self.copies[1:]:
                copy.state[...] = self.model.state
        out = [None] * len(self.copies)

        def work(k, mine):
            out[k] = self.copies[k].forward(np.ascontiguousarray(x[mine]), train,
                                            _rows_of(noise, mine))
        self._run(rows, work)
        y = np.empty((len(x),) + out[0].shape[1:], out[0].dtype)
        for k, mine in enumerate(rows):
            y[mine] = out[k]
        return y

    def backward(self, dout, grad_ready=None):
        """model.grad = the gradient of the whole batch: each copy's, added in copy order.
        With several copies, grad_ready(0) once at the end (the whole arena is final then:
        an overlapped update gets nothing to overlap); with one, the model's own backward."""
        rows = self._rows(len(dout))
        n = len(rows)
        if n == 1:
            return self.model.backward(dout, grad_ready=grad_ready)
        grads = [copy.grad for copy in self.copies]

        def work(k, mine):
            self.copies[k].backward(dout[mine])     # a copy: Model.backward makes one
            self.sum.barrier.wait()                  # every copy's gradient is complete
            lo, hi = len(grads[0]) * k // n, len(grads[0]) * (k + 1) // n
            for g in grads[1:n]:                     # this thread's block, in copy order
                grads[0][lo:hi] += g[lo:hi]
        self._run(rows, work)
        if grad_ready is not None:
            grad_ready(0)
        return None


def _rows_of(noise, rows):
    """The noise of these rows: KeyedNoise.rows, or any noise(stream, shape) cut to them."""
    if noise is None or hasattr(noise, "rows"):
        return noise if noise is None else noise.rows(rows)
    return lambda stream, shape: noise(stream, shape)[rows]
