"""A real one-node Slurm cluster on localhost, for the preemption test (and by hand).

Debian's ``slurm-wlm`` and ``munge`` (``apt-get install -y slurm-wlm munge``; .ci/run does it):
this writes a ~25-line slurm.conf into a private folder, starts ``munged`` as user munge on a
private socket, then ``slurmctld`` and ``slurmd`` on private ports, waits until the node is
idle, and on exit stops all three and deletes the folder. Nothing under /etc is touched, so it
runs beside a real cluster's daemons; the commands (sbatch, squeue, scontrol) find the cluster
through ``SLURM_CONF``, which ``env()`` sets.

    with SlurmCluster() as cluster:                  # needs root (slurmd starts jobs as users)
        subprocess.run(["sbatch", ...], env=cluster.env())

By hand (Ctrl-C tears it down):
    python -m tests.slurm_cluster          # prints the SLURM_CONF to export in another shell

The partition allows requeueing (JobRequeue=1, PreemptMode=REQUEUE), so ``scontrol requeue``
and preemption put a running job back in the queue, as on a production cluster.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")

SLURM_CONF = """\
ClusterName=mpigrad-test
SlurmctldHost={host}
SlurmctldPort={port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None
              and not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return f"not installed: {', '.join(absent)} (apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no user munge (the munge package creates it)"
    if not Path("/etc/munge/munge.key").exists():
        return "no /etc/munge/munge.key"
    return None


class SlurmCluster:
    """Context manager: a running one-node cluster; ``env()`` for the client commands."""

    def __init__(self, cpus: int | None = None):
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.host = socket.gethostname()
        self.procs: list[subprocess.Popen] = []
        self.dir: Path | None = None

    def env(self) -> dict:
        e = dict(os.environ)
        e["SLURM_CONF"] = str(self.dir / "slurm.conf")
        return e

    def _start(self, cmd: list[str], user: str | None = None) -> None:
        if user:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *cmd]  # exec, no fork
        self.procs.append(subprocess.Popen(cmd, env=self.env(), stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, start_new_session=True))

    def __enter__(self) -> "SlurmCluster":
        self.dir = Path(tempfile.mkdtemp(prefix="mpigrad-slurm-"))
        self.dir.chmod(0o755)  # munged (user munge) must reach its folder inside
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir()
        munge_dir = self.dir / "munge"
        munge_dir.mkdir()
        munge_dir.chmod(0o755)  # munged: the socket folder must be searchable by all
        shutil.chown(munge_dir, "munge", "munge")
        (self.dir / "slurm.conf").write_text(SLURM_CONF.format(
            host=self.host, dir=self.dir, cpus=self.cpus, port=free_port(),
            slurmd_port=free_port()))
        try:
            self._start(["munged", "--foreground", f"--socket={munge_dir}/munge.socket",
                         f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/log",
                         f"--seed-file={munge_dir}/seed"], user="munge")
            self._wait(lambda: (munge_dir / "munge.socket").exists(), "munged's socket")
            self._start(["slurmctld", "-D", "-i"])
            self._start(["slurmd", "-D", "-N", self.host])
            self._wait(self._node_idle, "the node to be idle")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=self.env(),
                             capture_output=True, text=True).stdout
        return out.strip() == "idle"

    def _wait(self, ready, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[-1] if p.args else p}: exited with "
                                       f"{p.returncode}: {p.stderr.read().decode()[-2000:]}"
                                       f"{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        text = ""
        for name in ("slurmctld.log", "slurmd.log", "munge/log"):
            path = self.dir / name
            if path.exists():
                text += f"\n--- {name} ---\n" + "\n".join(path.read_text().splitlines()[-15:])
        return text

    def wait_state(self, job_id: str, states: set[str], timeout: float = 120) -> str:
        """Poll the job until its state is one of ``states``; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_state(job_id)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {state} after {timeout} s{self.logs()}")
            time.sleep(0.2)

    def job_state(self, job_id: str) -> str:
        out = subprocess.run(["scontrol", "show", "job", job_id], env=self.env(),
                             capture_output=True, text=True).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields.get("JobState", "GONE")

    def job_field(self, job_id: str, name: str) -> str:
        out = subprocess.run(["scontrol", "show", "job", job_id], env=self.env(),
                             capture_output=True, text=True).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f).get(name, "")

    def __exit__(self, *exc) -> None:
        # scancel everything first, so slurmd's job steps are not left behind.
        subprocess.run(["scancel", "--full", "--signal=KILL", "--user=root"], env=self.env(),
                       capture_output=True)
        for p in reversed(self.procs):       # slurmd, slurmctld, then munged
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    p.wait()
            if p.stderr:
                p.stderr.close()
        self.procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


if __name__ == "__main__":
    reason = missing()
    if reason:
        raise SystemExit(f"cannot start a cluster: {reason}")
    with SlurmCluster() as c:
        print(f"one-node cluster up: export SLURM_CONF={c.dir}/slurm.conf  (Ctrl-C stops it)",
              flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
