"""Smoke test of the benchmark: `python -m launch.lab.bench --quick` runs and writes sane JSON.

A benchmark is not a test: no timing is asserted, only that every field is there and positive.
"""
import json
import subprocess
import sys

import pytest

from launch.lab.fakehosts import MPIRUN
from tests.dist_helpers import REPO, env, error_lines

pytestmark = pytest.mark.timeout(180)


def run_bench(mnist_h5, *args):
    """`python -m launch.lab.bench ARGS` on the test's MNIST file; returns the finished process."""
    e = env()
    e["MPIGRAD_DATA"] = str(mnist_h5)
    result = subprocess.run([sys.executable, "-m", "launch.lab.bench", *args], cwd=REPO, env=e,
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


def test_the_gemm_list_of_a_step_is_the_models_products():
    """A 2-layer MLP step is 5 products (no dx into the image), derived from the layers with
    their shapes and layouts; their FLOPs are the GEMM part of bench_table's count; with two
    copies of the model each copy multiplies its half of the batch; the replay runs them."""
    import numpy as np

    from core.model import Model
    from launch.lab.gemm_ceiling import replay_seconds, step_gemms

    model = Model([{"type": "flatten"}, {"type": "dense", "out": 16}, {"type": "relu"},
                   {"type": "dense", "out": 10}], input_shape=(28, 28, 1), seed=0)
    gemms = step_gemms(model, batch=8)
    assert [(g.a_shape, g.a_layout, g.b_shape, g.b_layout) for g in gemms] == [
        ((8, 784), "C", (784, 16), "C"),           # forward, dense 1: x W1
        ((8, 16), "C", (16, 10), "C"),             # forward, dense 2: h W2
        ((16, 8), "T", (8, 10), "C"),              # dW2 = h^T dy
        ((8, 10), "C", (10, 16), "T"),             # dx2 = dy W2^T
        ((784, 8), "T", (8, 16), "C"),             # dW1 = x^T dh (no dx1: nobody needs it)
    ]
    assert sum(g.flops for g in gemms) == 8 * 2 * (3 * (784 * 16 + 16 * 10) - 784 * 16)
    halves = step_gemms(model, batch=8, copies=2)
    assert sorted({g.copy for g in halves}) == [0, 1]
    assert [g.a_shape for g in halves if g.b_shape == (784, 16)] == [(4, 784), (4, 784)]
    assert sum(g.flops for g in halves) == sum(g.flops for g in gemms)
    assert np.isfinite(replay_seconds(gemms, repeats=2))        # no speed asserted
    assert np.isfinite(replay_seconds(halves, repeats=2))


def test_a_convolution_multiplies_its_im2col_chunk_by_chunk():
    """Conv2D's products in im2col form, (B*Ho*Wo, kh*kw*Cin) @ (kh*kw*Cin, Cout), split into
    chunks of whole samples; the model's real forward agrees on the shapes."""
    import numpy as np

    from core.model import Model
    from launch.lab.gemm_ceiling import layer_gemms

    model = Model([{"type": "conv", "out": 4, "kernel": 3},
                   {"type": "conv", "out": 8, "kernel": 3, "stride": 2, "pad": 1},
                   {"type": "flatten"}, {"type": "dense", "out": 10}],
                  input_shape=(28, 28, 1), seed=0)
    conv = model.layers[1]
    batch = 80
    forward, backward = layer_gemms(conv, batch)
    x = np.zeros((batch, 28, 28, 1), np.float32)
    _, ho, wo, cout = conv.forward(model.layers[0].forward(x, False), False).shape   # real
    assert len(forward) > 1                                      # chunked
    assert all(g.b_shape == (3 * 3 * 4, cout) and g.a_shape[0] % (ho * wo) == 0
               for g in forward)
    assert sum(g.a_shape[0] for g in forward) == batch * ho * wo
    assert len(backward) == 2 * len(forward)                     # dW and dx of every chunk
    assert sum(g.flops for g in backward) == 2 * sum(g.flops for g in forward)


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
    result = subprocess.run([sys.executable, "-m", "launch.lab.bench", *args, "--out", str(out)],
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
    result = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-m", "launch.lab.bench", "--quick",
                             "--presets", "mlp", "--out", str(tmp_path / "b.json")],
                            cwd=REPO, env=e, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable HDF5 file"), lines
    assert bad.read_text() == "not hdf5"                    # nothing overwritten
