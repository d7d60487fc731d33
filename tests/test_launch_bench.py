"""Smoke test of the benchmark: `python -m launch.bench --quick` runs and writes sane JSON.

A benchmark is not a test: no timing is asserted, only that every field is there and positive.
"""
import json
import subprocess
import sys

import pytest

from launch.fakehosts import MPIRUN
from tests.dist_helpers import REPO, env, error_lines

pytestmark = pytest.mark.timeout(180)


def run_bench(mnist_h5, *args):
    """`python -m launch.bench ARGS` on the test's MNIST file; returns the finished process."""
    e = env()
    e["MPIGRAD_DATA"] = str(mnist_h5)
    result = subprocess.run([sys.executable, "-m", "launch.bench", *args], cwd=REPO, env=e,
                            capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr
    return result


def test_quick_bench_writes_rows_with_positive_numbers(mnist_h5, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(mnist_h5, "--quick", "--presets", "mlp,cnn", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["machine"]["blas"].get("internal_api")
    rows = data["rows"]
    assert [r["preset"] for r in rows] == ["mlp", "cnn"]
    for r in rows:
        assert r["ranks"] == 1 and r["threads"] >= 1
        for key in ("images_per_s", "gflops", "peak_gflops", "pct_peak", "step_ms",
                    "train_flops_per_image", "eval_images_per_s", "peak_rss_mib",
                    "gemm_ms", "gemm_calls", "ceiling_images_per_s", "ceiling_pct_peak"):
            assert r[key] > 0, key
        assert set(r["split_ms"]) == {"data", "forward", "backward", "allreduce", "optimizer"}
        assert all(v >= 0 for v in r["split_ms"].values())
        assert r["update_ms"]["allreduce"] > 0 and r["update_ms"]["sharded"] > 0
    assert "img/s" in result.stdout and "ceil%" in result.stdout


def test_two_rank_bench_compares_the_plain_and_the_sharded_update(mnist_h5, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(mnist_h5, "--quick", "--presets", "mlp", "--ranks", "2", "--out", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert row["ranks"] == 2
    assert row["update_transport"] == "shared-memory"   # both ranks on this machine
    assert all(row["update_ms"][way] > 0 for way in ("allreduce", "sharded", "shared-memory"))
    assert "update alone, mlp at 2 ranks" in result.stdout


def test_layer_profile_times_every_layer(mnist_h5, tmp_path):
    out = tmp_path / "layers.json"
    result = run_bench(mnist_h5, "--layers", "--quick", "--presets", "cnn", "--out", str(out))
    rows = json.loads(out.read_text())["layers"]["cnn"]
    assert [r["type"] for r in rows[:3]] == ["conv", "maxpool", "relu"]
    assert all(r["forward_ms"] > 0 for r in rows)
    assert all(r["backward_ms"] > 0 for r in rows if r["type"] != "flatten")
    assert "total" in result.stdout


def test_the_gemm_recorder_sees_every_product_of_a_step_and_replays_them():
    """A 2-layer MLP step is 5 GEMMs (no dx into the image) plus 2 bias column sums; the
    recorder lists them with their shapes and layouts, and np.matmul is restored after."""
    import numpy as np

    from core.losses import LOSSES
    from core.model import Model
    from core.parallel import use_cores
    from launch.gemm_ceiling import record_matmuls, replay_seconds

    real = np.matmul
    model = Model([{"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "relu"},
                   {"type": "dense", "out": 10}], input_shape=(28, 28, 1), seed=0)
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    y = np.arange(8) % 10
    with use_cores(1), record_matmuls() as calls:                # one worker: calls in order
        out = model.forward(x, train=True)
        model.backward(LOSSES["xent"](out, y, divisor=8)[1])
    assert np.matmul is real
    products = [(c.a_shape, c.a_layout, c.b_shape, c.b_layout) for c in calls]
    assert products == [
        ((8, 784), "C", (784, 16), "C"),           # forward, dense 1
        ((8, 16), "C", (16, 10), "C"),             # forward, dense 2
        ((16, 8), "T", (8, 10), "C"),              # dW2 = h^T dy
        ((8, 10), "C", (10, 16), "T"),             # dx2 = dy W2^T
        ((8,), "C", (8, 10), "C"),                 # db2: column sum
        ((784, 8), "T", (8, 16), "C"),             # dW1 = x^T dh
        ((8,), "C", (8, 16), "C"),                 # db1
    ]
    assert calls[0].flops == 2 * 8 * 784 * 16
    replayed = replay_seconds(calls, repeats=2)   # runs the 7 products again; no speed asserted
    assert np.isfinite(replayed)
    # Two workers (core/parallel.py) multiply 4 rows each; the calls say which thread made
    # them, and the replay runs each thread's calls in a thread of its own.
    with use_cores(2), record_matmuls() as threaded:
        model.backward(LOSSES["xent"](model.forward(x, train=True), y, divisor=8)[1])
    assert sorted({c.thread for c in threaded}) == [0, 1]
    assert sorted(c.a_shape for c in threaded if c.b_shape == (784, 16)) == [(4, 784), (4, 784)]
    assert np.isfinite(replay_seconds(threaded, repeats=2))
    with pytest.raises(ZeroDivisionError), record_matmuls():
        1 / 0
    assert np.matmul is real


@pytest.mark.parametrize("args, message", [
    (["--presets", "nosuch"], "error: --presets: no such preset 'nosuch' (known: best, "),
    (["--ranks", "0"], "error: --ranks 0: expected rank counts >= 1, e.g. 1,2,4"),
    (["--ranks", "two"], "error: --ranks two: expected rank counts >= 1, e.g. 1,2,4"),
    (["--threads", "-1"], "error: --threads -1: expected an integer >= 0"),
    (["--seconds", "0", "--quick"], "error: --seconds 0.0: expected a number > 0"),
    (["--blocks", "0"], "error: --blocks 0: expected an integer >= 1"),
])
def test_bad_arguments_end_in_one_line_before_measuring(args, message, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "launch.bench", *args, "--out", str(out)],
                            cwd=REPO, env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not out.exists()


def test_an_unreadable_data_file_ends_every_rank_in_one_line(tmp_path):
    # Only rank 0 reads the data file; the other rank must not wait for it forever.
    bad = tmp_path / "mnist.h5"
    bad.write_text("not hdf5")
    e = env()
    e["MPIGRAD_DATA"] = str(bad)
    result = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-m", "launch.bench", "--quick",
                             "--presets", "mlp", "--out", str(tmp_path / "b.json")],
                            cwd=REPO, env=e, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable HDF5 file"), lines
    assert bad.read_text() == "not hdf5"                    # nothing overwritten
