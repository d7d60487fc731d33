"""Simulated machines on one Linux box: try a multi-host `mpirun` without a cluster.

Each "host" is a network namespace (its own network stack and loopback) plus, for every
process started in it, a UTS namespace (its own host name). The hosts are wired together on
a private subnet and reach each other by name, so MPICH's launcher (hydra `mpirun`) and the
MPI library treat them exactly like separate machines: the ranks get different host names,
`COMM_TYPE_SHARED` groups of size 1, and every byte between ranks crosses the virtual wire.

    python -m launch.fakehosts up [--hosts 2] [--prefix mpg]      # needs root
    python -m launch.fakehosts run [--prefix mpg] -- -n 2 python -m launch.fakehosts probe
    python -m data.prepare                                       # first: no internet in there
    python -m launch.fakehosts run -- -n 2 python -m dist.train --preset mlp --set train.epochs=1
    python -m launch.fakehosts run -- -f my-hostfile -n 4 python -m launch.fakehosts probe
    python -m launch.fakehosts status
    python -m launch.fakehosts down [--prefix mpg]

The fake hosts see the machine's file systems (same repository, venv, data file, run folder:
like a cluster with a shared home) but have no route to anything but each other, so the
data file must exist before training (`python -m data.prepare`, or data.path=...). A host
file for them lists PREFIX-a:SLOTS, PREFIX-b:SLOTS, ... (hydra syntax, launch/hostfile.example).
They also share the machine's cores, while each rank counts only the ranks of its own
host: add `--set run.threads=1` (or cores / total ranks) to avoid oversubscribing them.

`up` makes hosts PREFIX-a, PREFIX-b, ... (network namespaces of the same names). Two hosts
are joined by one veth pair; more hosts hang off a bridge in a namespace PREFIX-sw. In every
host the interface is called `mpg0` and has the address SUBNET.(i+1)/24 (default subnet
10.77.0); /etc/netns/<host>/hosts (which `ip netns exec` mounts over /etc/hosts) maps all
host names to those addresses. Nothing is created in the machine's own (root) namespace,
so several sets of fake hosts, even with the same subnet, can coexist.

`run` starts hydra's `mpirun` inside the first host, with `-hosts PREFIX-a,PREFIX-b,...`
(unless you pass -hosts/-host/-f yourself), `-iface mpg0` and
`-launcher ssh -launcher-exec launch/netns-launch`: hydra then starts its proxy on each
remote host through that wrapper as if through ssh (`netns-launch [ssh options] HOST CMD`),
and the wrapper (`python -m launch.fakehosts ssh ...`) runs CMD in HOST's namespace with
HOST as host name. Ranks are placed round-robin, one per host per turn (add -ppn N to
change that). The environment also pins the MPI transport to TCP over `mpg0`
(UCX_TLS=self,tcp, UCX_NET_DEVICES=mpg0; FI_PROVIDER=tcp, FI_TCP_IFACE=mpg0 for the OFI
netmod): the fake hosts share one kernel, and without that UCX notices it (same boot id)
and moves the data through shared memory instead of the network.

`probe` is a tiny MPI program that prints, per rank, its host name, node-local size and
the TCP connections it holds as local->peer (to show they run between the hosts' addresses):
    PROBE rank=1 size=2 host=mpg-b local_size=1 sum_ok=True tcp=10.77.0.2:42671->10.77.0.1:57911,...

`down` kills what still runs inside the hosts, deletes the namespaces and the /etc/netns
entries. The test tests/test_launch_multihost.py drives the same code (FakeHosts).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WRAPPER = HERE / "netns-launch"
IFACE = "mpg0"
NETNS_ETC = Path("/etc/netns")
MPIRUN = str(Path(sys.executable).parent / "mpirun") \
    if (Path(sys.executable).parent / "mpirun").exists() else (shutil.which("mpirun") or "mpirun")

# ssh options that take a value (hydra itself only passes -x, but be a faithful ssh).
_SSH_OPTS_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")


class FakeHostsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise FakeHostsError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def netns_names() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class FakeHosts:
    """The hosts PREFIX-a, PREFIX-b, ...: create (up), use (mpirun_command, env), destroy (down)."""

    def __init__(self, prefix: str = "mpg", hosts: int = 2, subnet: str = "10.77.0"):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,20}", prefix):
            raise FakeHostsError(f"prefix {prefix!r}: use 1-21 lower-case letters/digits")
        if not 2 <= hosts <= 26:
            raise FakeHostsError("--hosts must be between 2 and 26")
        self.prefix, self.subnet = prefix, subnet
        self.names = [f"{prefix}-{string.ascii_lowercase[i]}" for i in range(hosts)]
        self.switch = f"{prefix}-sw"

    @classmethod
    def existing(cls, prefix: str = "mpg") -> "FakeHosts":
        """The hosts of PREFIX as `up` left them (count and subnet read back from the system)."""
        names = sorted(n for n in netns_names() if re.fullmatch(rf"{re.escape(prefix)}-[a-z]", n))
        if len(names) < 2:
            raise FakeHostsError(f"no fake hosts {prefix}-a, {prefix}-b, ... "
                                 f"(run: python -m launch.fakehosts up --prefix {prefix})")
        fh = cls(prefix, len(names))
        fh.subnet = fh.address(fh.names[0]).rsplit(".", 1)[0]
        return fh

    def address(self, host: str) -> str:
        """The IPv4 address of `host` on the fake network (read from the namespace)."""
        out = _ip("-n", host, "-j", "addr", "show", "dev", IFACE).stdout
        for link in json.loads(out or "[]"):
            for a in link.get("addr_info", []):
                if a.get("family") == "inet":
                    return a["local"]
        raise FakeHostsError(f"{host}: no IPv4 address on {IFACE}")

    def addresses(self) -> dict[str, str]:
        return {h: f"{self.subnet}.{i + 1}" for i, h in enumerate(self.names)}

    # ---- life cycle -----------------------------------------------------------------------
    def up(self) -> "FakeHosts":
        taken = set(netns_names()) & {*self.names, self.switch}
        if taken:
            raise FakeHostsError(f"namespaces already exist: {', '.join(sorted(taken))} "
                                 f"(python -m launch.fakehosts down --prefix {self.prefix})")
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self) -> None:
        for host in self.names:
            _ip("netns", "add", host)
        if len(self.names) == 2:          # one cable: a veth pair, one end in each host
            a, b = self.names
            _ip("link", "add", IFACE, "netns", a, "type", "veth", "peer", "name", IFACE, "netns", b)
        else:                             # a switch: a bridge in its own namespace
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, host in enumerate(self.names):
                port = f"port{i}"
                _ip("link", "add", IFACE, "netns", host, "type", "veth",
                    "peer", "name", port, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", port, "master", "br0")
                _ip("-n", self.switch, "link", "set", port, "up")
        hosts_file = "127.0.0.1\tlocalhost\n" + "".join(
            f"{addr}\t{host}\n" for host, addr in self.addresses().items())
        for host, addr in self.addresses().items():
            _ip("-n", host, "addr", "add", f"{addr}/24", "dev", IFACE)
            _ip("-n", host, "link", "set", IFACE, "up")
            _ip("-n", host, "link", "set", "lo", "up")
            (NETNS_ETC / host).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / host / "hosts").write_text(hosts_file)
        self.wait_reachable()

    def wait_reachable(self, timeout: float = 10) -> None:
        """Wait until the links are up (veth/bridge carrier) in every host."""
        deadline = time.monotonic() + timeout
        for host in self.names:
            while True:
                out = _ip("-n", host, "-j", "link", "show", "dev", IFACE).stdout
                if "LOWER_UP" in out:
                    break
                if time.monotonic() > deadline:
                    raise FakeHostsError(f"{host}: {IFACE} has no carrier")
                time.sleep(0.05)

    def down(self) -> list[str]:
        """Stop whatever still runs inside the hosts, delete namespaces and /etc/netns files."""
        removed = []
        present = set(netns_names())
        for ns in [*self.names, self.switch]:
            if ns in present:
                pids = _ip("netns", "pids", ns, check=False).stdout.split()
                for pid in pids:          # processes this tool started inside the namespace
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                _ip("netns", "del", ns, check=False)
                removed.append(ns)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        return removed

    # ---- use --------------------------------------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        """Environment for mpirun and the ranks: MPI data over TCP on the fake network only."""
        env = dict(os.environ if base is None else base)
        env.update({
            "UCX_TLS": "self,tcp", "UCX_NET_DEVICES": IFACE,   # MPICH ch4:ucx (the default)
            "FI_PROVIDER": "tcp", "FI_TCP_IFACE": IFACE,        # MPICH ch4:ofi
            "FAKEHOSTS_PYTHON": sys.executable,
        })
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        return env

    def mpirun_command(self, mpirun_args: list[str], mpirun: str = MPIRUN) -> list[str]:
        """`ip netns exec HOST-a` + own host name + `mpirun <launcher options> <mpirun_args>`."""
        placement = [] if {"-hosts", "-host", "-f", "-hostfile", "-machinefile"} & set(mpirun_args) \
            else ["-hosts", ",".join(self.names)]
        inner = [mpirun, "-launcher", "ssh", "-launcher-exec", str(WRAPPER), "-iface", IFACE,
                 *placement, *mpirun_args]
        return in_host(self.names[0], inner)


def in_host(host: str, argv: list[str]) -> list[str]:
    """argv run inside network namespace `host` with host name `host` (a new UTS namespace)."""
    return ["ip", "netns", "exec", host, "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv]


# ---- the ssh stand-in that hydra calls --------------------------------------------------------
def ssh(argv: list[str]) -> int:
    """`netns-launch [ssh options] [user@]HOST COMMAND...`: COMMAND (a shell line, as with ssh)
    inside fake host HOST. Exits 255 like ssh when HOST is not a fake host."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        i += 2 if (len(opt) == 2 and opt[1] in _SSH_OPTS_WITH_ARG) else 1
    if i >= len(argv):
        print("netns-launch: usage: netns-launch [ssh options] HOST COMMAND", file=sys.stderr)
        return 255
    host = argv[i].rsplit("@", 1)[-1]
    command = " ".join(argv[i + 1:])
    if host not in netns_names():
        print(f"netns-launch: {host}: no such fake host (network namespace)", file=sys.stderr)
        return 255
    argv_ = in_host(host, ["sh", "-c", command or "exec sh"])
    os.execvp(argv_[0], argv_)
    return 255  # not reached


# ---- a small MPI program to look at the placement ------------------------------------------------
def probe() -> int:
    import numpy as np

    from dist.comm import Comm
    comm = Comm()
    ranks = comm.allgather(comm.rank)                 # some traffic between the ranks
    buf = np.ones(1 << 16, dtype=np.float32)          # and a rendezvous-sized message
    comm.allreduce_sum_(buf)
    ss = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                        text=True, timeout=10).stdout
    mine = ["->".join(line.split()[2:4]) for line in ss.splitlines()
            if f"pid={os.getpid()}," in line]
    sum_ok = sum(ranks) == comm.size * (comm.size - 1) // 2 and buf[0] == comm.size
    line = (f"PROBE rank={comm.rank} size={comm.size} host={socket.gethostname()} "
            f"local_size={comm.local_size} sum_ok={sum_ok} tcp={','.join(mine) or '-'}")
    for line in comm.gather(line) or []:
        print(line, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ssh"]:               # hot path: called by hydra through netns-launch
        return ssh(argv[1:])
    if argv[:1] == ["probe"]:
        return probe()
    parser = argparse.ArgumentParser(prog="python -m launch.fakehosts",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="create the fake hosts")
    p_up.add_argument("--hosts", type=int, default=2)
    p_up.add_argument("--subnet", default="10.77.0", help="first three octets (default 10.77.0)")
    p_run = sub.add_parser("run", help="mpirun across the fake hosts: run -- <mpirun args>")
    p_run.add_argument("mpirun_args", nargs=argparse.REMAINDER)
    sub.add_parser("down", help="remove the fake hosts")
    sub.add_parser("status", help="list the fake hosts and their addresses")
    sub.add_parser("probe", help="(MPI program) print host name, node-local size, TCP peers")
    for p in (p_up, p_run, *[sub.choices[c] for c in ("down", "status")]):
        p.add_argument("--prefix", default="mpg", help="host names PREFIX-a, PREFIX-b, ...")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            fh = FakeHosts(args.prefix, args.hosts, args.subnet).up()
            for host, addr in fh.addresses().items():
                print(f"{host}\t{addr}")
        elif args.cmd == "down":
            existing = [n for n in netns_names() if re.fullmatch(rf"{args.prefix}-([a-z]|sw)", n)]
            fh = FakeHosts(args.prefix, max(2, sum(n != f"{args.prefix}-sw" for n in existing)))
            print("removed: " + (", ".join(fh.down()) or "nothing"))
        elif args.cmd == "status":
            fh = FakeHosts.existing(args.prefix)
            for host in fh.names:
                print(f"{host}\t{fh.address(host)}")
        elif args.cmd == "run":
            mpirun_args = args.mpirun_args[1:] if args.mpirun_args[:1] == ["--"] else args.mpirun_args
            if not mpirun_args:
                parser.error("run -- <mpirun args>, e.g. run -- -n 2 python -m launch.fakehosts probe")
            fh = FakeHosts.existing(args.prefix)
            cmd = fh.mpirun_command(mpirun_args)
            return subprocess.run(cmd, env=fh.env()).returncode
    except FakeHostsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:
        print(f"error: {err} (creating network namespaces needs root)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
