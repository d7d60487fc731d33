"""The README's reproduction commands, run exactly as the README writes them, on a fresh copy of
the repository, give the figures recorded beside the shipped models (launch/models/).

The copy holds what a clone holds: the files git tracks, plus the new ones not yet committed
(``git ls-files --cached --others --exclude-standard``), so that the test checks the working
tree. The commands are read from README.md itself -- the inline ``python -m dist.evaluate
launch/models/...`` and the fenced block that starts ``python -m dist.ensemble`` -- so the test
fails when the README drifts. They run in a shell whose ``python`` is this interpreter, with no
flag added; the only help they get is the environment's default data location
($MPIGRAD_DATA, data/prepare.py), pointed at the session's prepared MNIST file.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SHIPPED = REPO / "launch" / "models"


def readme_evaluate_command() -> str:
    """The README's inline command that evaluates the shipped single model."""
    found = re.findall(r"`(python -m dist\.evaluate launch/models/[^`]+)`", README)
    assert found, "README.md no longer shows `python -m dist.evaluate launch/models/...`"
    return found[0]


def readme_ensemble_command() -> str:
    """The README's fenced command that combines the shipped snapshot ensemble."""
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", README, flags=re.S)
    found = [b.strip() for b in blocks if b.lstrip().startswith("python -m dist.ensemble")
             and "launch/models" in b]
    assert found, "README.md no longer has a ```sh block running dist.ensemble on launch/models"
    return found[0]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A copy of what a clone of the repository holds (see the module docstring)."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    folder = tmp_path_factory.mktemp("clone") / "mpigrad"
    for name in filter(None, names):
        if (REPO / name).is_file():            # a tracked file deleted in the work tree: skip
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    return folder


def run_as_written(command: str, clone: Path, mnist_h5: Path, cache: Path):
    """The command, verbatim, in a shell in the clone: `python` is this interpreter; MNIST is
    at the default data location; nothing of this checkout is on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPIGRAD_DATA")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               MPIGRAD_DATA=str(mnist_h5), XDG_CACHE_HOME=str(cache))
    return subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=280)


def test_the_shipped_models_hold_no_machine_paths():
    """A model trained elsewhere names no folder of that machine (data.path is empty: the
    default data location; run.dir and where a model file came from are relative)."""
    for path in SHIPPED.rglob("*"):
        if path.is_file():
            assert b"/work/" not in path.read_bytes(), path
    for path in SHIPPED.rglob("*.h5"):
        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["config"])
            assert config["data"]["path"] == "", path
            assert not Path(config["run"]["dir"]).is_absolute(), path
            assert not Path(str(f.attrs["source"])).is_absolute(), path


def test_readme_evaluate_command_gives_the_shipped_figure(clone, mnist_h5, tmp_path):
    recorded = json.loads((SHIPPED / "best" / "test.json").read_text())
    out = run_as_written(readme_evaluate_command(), clone, mnist_h5, tmp_path)
    assert out.returncode == 0, out.stderr
    accuracy = re.search(r"accuracy ([\d.]+)%", out.stdout)
    assert accuracy and accuracy.group(1) == f"{100 * recorded['acc']:.2f}", out.stdout
    rows = [[int(v) for v in line.split()[1:]] for line in out.stdout.splitlines()
            if re.fullmatch(r"\s+\d( +\d+){10}", line)]
    assert rows == recorded["confusion"], out.stdout
    assert f"{100 * recorded['acc']:.2f}% test" in README


def test_readme_ensemble_command_gives_the_shipped_figure(clone, mnist_h5, tmp_path):
    recorded = json.loads((SHIPPED / "ensemble" / "ensemble.json").read_text())
    out = run_as_written(readme_ensemble_command(), clone, mnist_h5, tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads((clone / "launch" / "models" / "ensemble" / "ensemble.json").read_text())
    for split in ("val", "test"):
        assert result[split]["ensemble"] == recorded[split]["ensemble"]
        assert result[split]["members"] == recorded[split]["members"]
    assert f"{100 * result['test']['ensemble']:.2f}%" in README


def test_a_recorded_data_path_missing_here_means_the_default_location(mnist_h5, tmp_path):
    """A model whose run trained on a file this machine does not have is evaluated on the
    default data location, with one note saying so (dist.evaluate.data_file)."""
    model = tmp_path / "model.h5"
    shutil.copy(SHIPPED / "best" / "model.h5", model)
    gone = tmp_path / "elsewhere" / "mnist.h5"
    with h5py.File(model, "r+") as f:
        config = json.loads(f.attrs["config"])
        config["data"]["path"] = str(gone)
        f.attrs["config"] = json.dumps(config)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MPIGRAD_DATA=str(mnist_h5))
    out = subprocess.run([sys.executable, "-m", "dist.evaluate", str(model), "--split", "val",
                          "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and str(gone) in notes[0] and "default data location" in notes[0]
    assert json.loads(out.stdout)["n"] == 5000
    assert not gone.exists()


def readme_fast_command() -> str:
    """The README's command that trains the `fast` preset (its 'Using it' block)."""
    found = re.findall(r"^mpirun -n 2 python -m dist\.train --preset fast\b.*$", README, flags=re.M)
    assert found, "README.md no longer shows `mpirun -n 2 python -m dist.train --preset fast`"
    return found[0]


def test_readme_fast_command_trains_to_about_99_percent(clone, mnist_h5, tmp_path):
    """The quick training command, verbatim: one epoch of `fast` on 2 ranks reaches about the
    99% the README claims (99.04% recorded for seed 0 on the EPYC; another BLAS kernel may
    round differently, hence the margin), and says where its wall time went."""
    out = run_as_written(readme_fast_command(), clone, mnist_h5, tmp_path)
    assert out.returncode == 0, out.stderr
    [run] = (clone / "runs").glob("fast-*")
    final = json.loads((run / "final.json").read_text())
    assert final["test_acc"] >= 0.985, final
    assert {"startup", "final_test"} <= set(final["wall_breakdown"]), final["wall_breakdown"]
    assert "done in" in out.stdout, out.stdout
