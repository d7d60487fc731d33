"""The overlapped update (dist/update.py): gradient buckets summed while backward still runs.

* the buckets are contiguous ranges of whole layers that tile the arena from its end, and
  backward's callback announces each layer's gradient only once it is final;
* 4 ranks with the overlapped update in buckets of ~10 kB (several per step) end a real MNIST
  run with the parameters of the plain allreduce update -- bitwise: each element's sum is
  MPI's allreduce of the same 4 numbers, whether sent in one piece or in buckets (measured
  here; MPICH picks the same algorithm for these sizes) -- and of 1 rank within 1e-5;
* a killed and resumed overlapped run ends bit-identical to an uninterrupted one.

The hierarchical update needs several hosts: tests/test_launch_multihost.py.
"""
import numpy as np
import pytest

from core.model import Model
from dist.update import bucket_ranges
from tests.dist_helpers import SMALL_LAYERS, rel_diff, run_job, small_run_args, theta_of
from tests.test_dist_resume import full_and_killed_then_resumed

pytestmark = pytest.mark.timeout(300)

OVERLAPPED = ("--set", "comm.update=overlapped", "--set", "comm.bucket_mb=0.01")
FINAL = "ckpt-e002-s00000.h5"


def small_model() -> Model:
    import tomllib
    return Model(tomllib.loads(f"layers = {SMALL_LAYERS}")["layers"], seed=3)


def test_buckets_are_whole_layers_from_the_end_of_the_arena():
    model = small_model()
    size = model.theta.size
    for bucket_bytes in (1, 4000, 40_000, 1e9):
        buckets = bucket_ranges(model.param_offsets, size, bucket_bytes)
        assert buckets[0][1] == size and buckets[-1][0] == 0
        for (lo, hi), (lo_next, hi_next) in zip(buckets, buckets[1:]):
            assert hi_next == lo and lo_next < lo            # contiguous, towards the start
        assert all(lo in model.param_offsets for lo, _ in buckets)
        assert all((hi - lo) * 4 >= bucket_bytes for lo, hi in buckets[:-1])
    assert len(bucket_ranges(model.param_offsets, size, 1)) == \
        sum(1 for layer in model.layers if layer.param_shapes)   # one per layer
    assert bucket_ranges(model.param_offsets, size, 1e9) == [(0, size)]


def test_backward_announces_each_gradient_once_it_is_final():
    model = small_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 28, 28, 1)).astype(np.float32)
    model.forward(x, train=True, noise=lambda stream, shape: rng.random((8, *shape), np.float32))
    dout = rng.standard_normal((8, 10)).astype(np.float32)
    seen = []                                       # (p, copy of grad[p:] at that moment)
    model.grad[...] = np.nan
    model.backward(dout, grad_ready=lambda p: seen.append((p, model.grad[p:].copy())))
    offsets = [p for p, _ in seen]
    assert offsets == sorted(offsets, reverse=True) and offsets[-1] == 0
    for p, snapshot in seen:                        # nothing after p changed later
        assert np.array_equal(snapshot, model.grad[p:])


def test_overlapped_update_matches_the_allreduce_update(mnist_h5, tmp_path):
    runs = {"allreduce": (4, ("--set", "comm.update=allreduce")), "overlapped": (4, OVERLAPPED),
            "one": (1, ())}
    for name, (ranks, extra) in runs.items():
        job = run_job(ranks, small_run_args(mnist_h5, tmp_path, name, *extra), timeout=200)
        assert job.returncode == 0, job.stderr
        if ranks > 1:
            assert f"{name} update" in job.stdout
    theta = {name: theta_of(tmp_path / name / FINAL) for name in runs}
    assert theta["overlapped"].tobytes() == theta["allreduce"].tobytes()
    assert rel_diff(theta["overlapped"], theta["one"]) < 1e-5


def test_killed_and_resumed_overlapped_run_is_bitwise_identical(mnist_h5, tmp_path):
    extra = (*OVERLAPPED, "--set", "run.checkpoint_every=5", "--set", "run.keep_last=50")
    resumed = full_and_killed_then_resumed(mnist_h5, tmp_path, *extra)
    assert "overlapped update" in resumed.stdout
    assert theta_of(tmp_path / "killed" / FINAL).tobytes() == \
        theta_of(tmp_path / "full" / FINAL).tobytes()
