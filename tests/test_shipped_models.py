"""The models shipped in launch/models/ reproduce, on a fresh clone, the test figures the README
quotes for them (issue 20: the weights behind the headline figures are in the repository)."""
import json
from pathlib import Path

import pytest

from tests.dist_helpers import run_job

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "launch" / "models"


def test_the_shipped_single_model_gives_its_test_figure(mnist_h5):
    recorded = json.loads((MODELS / "best" / "test.json").read_text())
    out = run_job(1, [str(MODELS / "best" / "model.h5"), "--data", str(mnist_h5), "--json"],
                  module="dist.evaluate")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["acc"], result["confusion"]) == (recorded["acc"], recorded["confusion"])
    assert f"{100 * result['acc']:.2f}% test" in (REPO / "README.md").read_text()


# The command that trained the shipped snapshot ensemble (launch/docs/protocol-20.md, C3); run
# again on a folder whose member is trained, it only combines the snapshots.
ENSEMBLE_COMMAND = ["--members", "1", "--preset", "best", "--snapshots", "--name", "ensemble",
                    "--set", "schedule.kind=cyclic", "--set", "schedule.cycles=3",
                    "--set", "train.epochs=24", "--set", "train.seed=200",
                    "--set", "optim.ema_decay=0", "--set", "data.elastic_alpha=36",
                    "--set", "data.elastic_sigma=6"]


def test_the_shipped_ensemble_gives_its_test_figure(mnist_h5, tmp_path):
    import shutil
    recorded = json.loads((MODELS / "ensemble" / "ensemble.json").read_text())
    shutil.copytree(MODELS / "ensemble", tmp_path / "ensemble")     # the command rewrites its json
    out = run_job(1, [*ENSEMBLE_COMMAND, "--set", f"run.dir={tmp_path}",
                      "--set", f"data.path={mnist_h5}"], module="dist.ensemble")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())
    for split in ("val", "test"):
        assert result[split]["ensemble"] == recorded[split]["ensemble"]
        assert result[split]["members"] == recorded[split]["members"]
    assert f"{100 * result['test']['ensemble']:.2f}%" in (REPO / "README.md").read_text()
