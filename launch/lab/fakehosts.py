"""Simulated machines on one Linux box: try a multi-host `mpirun` without a cluster.

Each "host" is a network namespace (its own network stack and loopback) plus, for every
process started in it, a UTS namespace (its own host name). The hosts are wired together on
a private subnet and reach each other by name, so MPICH's launcher (hydra `mpirun`) and the
MPI library treat them exactly like separate machines: the ranks get different host names,
`COMM_TYPE_SHARED` groups of size 1, and every byte between ranks crosses the virtual wire.

    python -m launch.lab.fakehosts up [--hosts 2] [--prefix mpg]     # needs root
    python -m launch.lab.fakehosts up --hosts 4 --link 1gbit:100us  # links with limits (wire.py)
    python -m launch.lab.fakehosts measure                   # their round trip and Mbit/s
    python -m launch.lab.fakehosts run [--prefix mpg] -- -n 2 python -m launch.lab.fakehosts probe
    python -m launch.lab.fakehosts run --slots 2 -- -n 4 ...         # 2 ranks per host
    python -m launch.lab.fakehosts run -- -f my-hostfile -n 4 ...    # your own host file
    python -m data.prepare                                   # first: no internet in there
    python -m launch.lab.fakehosts run -- -n 2 python -m dist.train --set train.epochs=1
    python -m launch.lab.fakehosts status
    python -m launch.lab.fakehosts down [--prefix mpg]

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

`--link RATE[:DELAY[:JITTER[:LOSS%]]]` gives every host's cable a bandwidth (tc's tbf on its
interface) and a one-way latency, jitter and loss (a user-space switch, launch/lab/wire.py,
which needs no netem); then the hosts hang off that switch's TAP devices instead of veths.
`measure` checks a link: the median TCP round trip of one byte and the rate of a bulk send
from the first host to the second (the switch, a Python loop, adds a little to the latency
asked for).

`run` starts hydra's `mpirun` inside the first host, with `-hosts PREFIX-a,PREFIX-b,...`
(unless you pass -hosts/-host/-f yourself), `-iface mpg0` and
`-launcher ssh -launcher-exec launch/lab/netns-launch`: hydra then starts its proxy on each
remote host through that wrapper as if through ssh (`netns-launch [ssh options] HOST CMD`),
and the wrapper (`python -m launch.lab.fakehosts ssh ...`) runs CMD in HOST's namespace with
HOST as host name. Ranks are placed round-robin, one per host per turn; `--slots N` places
N ranks on a host before the next (`-hosts a:N,b:N`), so ranks 0..N-1 share host a and its
memory, as on a cluster node. The environment also pins the MPI transport to TCP over `mpg0`
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
import struct
import subprocess
import sys
import time
from pathlib import Path

from launch.lab.wire import MTU, LinkSpec

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WRAPPER = HERE / "netns-launch"
IFACE = "mpg0"
NETNS_ETC = Path("/etc/netns")
LINKS_DIR = Path("/run/mpigrad-fakehosts")      # PREFIX.link: the --link a set was made with
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


def _tc(host: str, *args: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", host, "tc", *args], capture_output=True,
                            text=True, timeout=20)
    if result.returncode != 0:
        raise FakeHostsError(f"{host}: tc {' '.join(args)}: {result.stderr.strip()}")


def netns_names() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class FakeHosts:
    """The hosts PREFIX-a, PREFIX-b, ...: create (up), use (mpirun_command, env), destroy (down)."""

    def __init__(self, prefix: str = "mpg", hosts: int = 2, subnet: str = "10.77.0",
                 link: LinkSpec | None = None):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,20}", prefix):
            raise FakeHostsError(f"prefix {prefix!r}: use 1-21 lower-case letters/digits")
        if not 2 <= hosts <= 26:
            raise FakeHostsError("--hosts must be between 2 and 26")
        self.prefix, self.subnet = prefix, subnet
        self.names = [f"{prefix}-{string.ascii_lowercase[i]}" for i in range(hosts)]
        self.switch = f"{prefix}-sw"
        self.link = link or LinkSpec()

    @classmethod
    def existing(cls, prefix: str = "mpg") -> "FakeHosts":
        """The hosts of PREFIX as `up` left them (count and subnet read back from the system)."""
        names = sorted(n for n in netns_names() if re.fullmatch(rf"{re.escape(prefix)}-[a-z]", n))
        if len(names) < 2:
            raise FakeHostsError(f"no fake hosts {prefix}-a, {prefix}-b, ... "
                                 f"(run: python -m launch.lab.fakehosts up --prefix {prefix})")
        saved = LINKS_DIR / f"{prefix}.link"
        link = LinkSpec.parse(saved.read_text()) if saved.exists() else LinkSpec()
        fh = cls(prefix, len(names), link=link)
        fh.subnet = fh.address(fh.names[0]).rsplit(".", 1)[0]
        return fh

    def link_of(self, host: str) -> str:
        """The host's link as tc and the switch see it (for `status`)."""
        out = subprocess.run(["ip", "netns", "exec", host, "tc", "qdisc", "show", "dev", IFACE],
                             capture_output=True, text=True, timeout=20).stdout
        rate = re.search(r"tbf \S+ root .*?rate (\S+)", out)
        delay = (f", {self.link.delay * 1e6:g} us one way (launch.lab.wire)"
                 if self.link.needs_wire else "")
        return f"rate {rate[1] if rate else 'unlimited'}{delay}"

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
                                 f"(python -m launch.lab.fakehosts down --prefix {self.prefix})")
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self) -> None:
        for host in self.names:
            _ip("netns", "add", host)
        if self.link.needs_wire:          # a user-space switch that delays (launch/lab/wire.py)
            self._start_wire()
        elif len(self.names) == 2:        # one cable: a veth pair, one end in each host
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
            if self.link.rate:            # the bandwidth: a token bucket on the way out
                _tc(host, "qdisc", "replace", "dev", IFACE, "root", *self.link.tbf_args())
            (NETNS_ETC / host).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / host / "hosts").write_text(hosts_file)
        self.wait_reachable()
        LINKS_DIR.mkdir(parents=True, exist_ok=True)
        (LINKS_DIR / f"{self.prefix}.link").write_text(str(self.link))

    def _start_wire(self) -> None:
        """Start launch/lab/wire.py's switch: it makes a TAP device IFACE in every host and then
        moves into the namespace PREFIX-sw (so `down` ends it with the hosts)."""
        _ip("netns", "add", self.switch)
        wire = subprocess.Popen(
            [sys.executable, "-m", "launch.lab.wire", self.switch, IFACE, str(self.link),
             *self.names],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        if wire.stdout.readline().strip() != "ready":
            wire.kill()
            raise FakeHostsError(f"launch.lab.wire did not start (exit {wire.wait()}); run "
                                 f"`python -m launch.lab.wire {self.switch} {IFACE} {self.link} "
                                 f"{' '.join(self.names)}` to see why")
        wire.stdout.close()
        for host in self.names:
            _ip("-n", host, "link", "set", IFACE, "mtu", str(MTU))

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
        (LINKS_DIR / f"{self.prefix}.link").unlink(missing_ok=True)
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

    def mpirun_command(self, mpirun_args: list[str], mpirun: str = MPIRUN,
                       slots: int = 1) -> list[str]:
        """`ip netns exec HOST-a` + own host name + `mpirun <launcher options> <mpirun_args>`.
        ``slots``: ranks placed on a host before the next (`-hosts a:2,b:2`: 0,1 on a, 2,3 on b)."""
        hosts = ",".join(f"{h}:{slots}" if slots > 1 else h for h in self.names)
        placement = [] if {"-hosts", "-host", "-f", "-hostfile", "-machinefile"} & set(mpirun_args) \
            else ["-hosts", hosts]
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


# ---- what a link really does: round-trip time and throughput between two hosts ------------------
MEASURE_PORT = 47700


def _recv_exactly(sock: socket.socket, n: int) -> None:
    view = memoryview(bytearray(min(n, 1 << 20)))
    while n > 0:
        got = sock.recv_into(view, min(n, len(view)))
        if not got:
            raise ConnectionError("peer closed the connection")
        n -= got


def link_server(port: int = MEASURE_PORT) -> int:
    """(runs in the far host) Echo one-byte pings, then swallow a bulk transfer and answer."""
    with socket.create_server(("", port)) as server:
        conn, _ = server.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        (pings,) = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))
        for _ in range(pings):
            conn.sendall(conn.recv(1, socket.MSG_WAITALL))
        (size,) = struct.unpack("!Q", conn.recv(8, socket.MSG_WAITALL))
        _recv_exactly(conn, size)
        conn.sendall(b"k")
    return 0


def link_client(address: str, port: int = MEASURE_PORT, pings: int = 200,
                seconds: float = 1.0, rate: float = 0.0) -> dict:
    """(runs in the near host) Median TCP round trip of 1 byte; throughput of a bulk send of
    about ``seconds`` at ``rate`` bit/s (64 MB if unlimited), to its acknowledgement."""
    deadline = time.monotonic() + 10
    while True:                          # the server may not listen yet
        try:
            sock = socket.create_connection((address, port), timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(struct.pack("!I", pings))
        rtts = []
        for _ in range(pings):
            t = time.perf_counter()
            sock.sendall(b"p")
            sock.recv(1, socket.MSG_WAITALL)
            rtts.append(time.perf_counter() - t)
        size = int(rate / 8 * seconds) if rate else 64 << 20
        sock.sendall(struct.pack("!Q", size))
        chunk = bytes(1 << 20)
        t = time.perf_counter()
        for sent in range(0, size, len(chunk)):
            sock.sendall(chunk[:size - sent])
        sock.recv(1, socket.MSG_WAITALL)
        elapsed = time.perf_counter() - t
    rtts.sort()
    return {"rtt_us": 1e6 * rtts[len(rtts) // 2], "rtt_min_us": 1e6 * rtts[0],
            "mbit_s": size * 8 / elapsed / 1e6, "bytes": size}


def measure(fh: "FakeHosts", seconds: float = 1.0) -> dict:
    """Round trip and throughput from the first host to the second, over the fake network."""
    a, b = fh.names[:2]
    py = [sys.executable, "-m", "launch.lab.fakehosts"]
    server = subprocess.Popen(in_host(b, [*py, "link-server"]), env=fh.env(),
                              stdout=subprocess.DEVNULL)
    try:
        out = subprocess.run(in_host(a, [*py, "link-client", fh.addresses()[b],
                                         str(fh.link.rate), str(seconds)]),
                             env=fh.env(), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise FakeHostsError(f"link measurement failed: {out.stderr.strip()}")
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    return {"link": str(fh.link), **json.loads(out.stdout)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ssh"]:               # hot path: called by hydra through netns-launch
        return ssh(argv[1:])
    if argv[:1] == ["probe"]:
        return probe()
    if argv[:1] == ["link-server"]:
        return link_server()
    if argv[:1] == ["link-client"]:     # ADDRESS RATE SECONDS
        rate, seconds = float(argv[2]), float(argv[3])
        print(json.dumps(link_client(argv[1], rate=rate, seconds=seconds)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m launch.lab.fakehosts",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="create the fake hosts")
    p_up.add_argument("--hosts", type=int, default=2)
    p_up.add_argument("--subnet", default="10.77.0", help="first three octets (default 10.77.0)")
    p_up.add_argument("--link", default="unlimited",
                      help="each host's cable: RATE[:DELAY[:JITTER[:LOSS%%]]], e.g. 1gbit:100us "
                           "(launch/lab/wire.py; default unlimited)")
    p_run = sub.add_parser("run", help="mpirun across the fake hosts: run -- <mpirun args>")
    p_run.add_argument("--slots", type=int, default=1,
                       help="ranks per host, placed in blocks (-hosts a:N,b:N; default 1)")
    p_run.add_argument("mpirun_args", nargs=argparse.REMAINDER)
    sub.add_parser("down", help="remove the fake hosts")
    sub.add_parser("status", help="list the fake hosts and their addresses")
    sub.add_parser("probe", help="(MPI program) print host name, node-local size, TCP peers")
    p_measure = sub.add_parser("measure", help="round-trip time and throughput, first to second host")
    p_measure.add_argument("--seconds", type=float, default=1.0)
    for p in (p_up, p_run, p_measure, *[sub.choices[c] for c in ("down", "status")]):
        p.add_argument("--prefix", default="mpg", help="host names PREFIX-a, PREFIX-b, ...")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            try:
                link = LinkSpec.parse(args.link)
            except ValueError as err:
                parser.error(str(err))
            fh = FakeHosts(args.prefix, args.hosts, args.subnet, link).up()
            for host, addr in fh.addresses().items():
                print(f"{host}\t{addr}")
        elif args.cmd == "down":
            existing = [n for n in netns_names() if re.fullmatch(rf"{args.prefix}-([a-z]|sw)", n)]
            fh = FakeHosts(args.prefix, max(2, sum(n != f"{args.prefix}-sw" for n in existing)))
            print("removed: " + (", ".join(fh.down()) or "nothing"))
        elif args.cmd == "status":
            fh = FakeHosts.existing(args.prefix)
            for host in fh.names:
                print(f"{host}\t{fh.address(host)}\t{fh.link_of(host)}")
        elif args.cmd == "measure":
            fh = FakeHosts.existing(args.prefix)
            print(json.dumps(measure(fh, args.seconds)))
        elif args.cmd == "run":
            mpirun_args = args.mpirun_args[1:] if args.mpirun_args[:1] == ["--"] else args.mpirun_args
            if not mpirun_args:
                parser.error("run -- <mpirun args>, "
                             "e.g. run -- -n 2 python -m launch.lab.fakehosts probe")
            fh = FakeHosts.existing(args.prefix)
            cmd = fh.mpirun_command(mpirun_args, slots=args.slots)
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
