"""The cables between the fake hosts of launch/lab/fakehosts.py: bandwidth, latency, jitter, loss.

    python -m launch.lab.fakehosts up --hosts 2 --link 1gbit:100us          # 1 Gbit/s, 100 us
    python -m launch.lab.fakehosts up --hosts 4 --link 10gbit:20us:5us:0.01%  # + jitter, loss
    python -m launch.lab.fakehosts measure                                   # check: RTT, Mbit/s

A link is ``RATE[:DELAY[:JITTER[:LOSS%]]]``: RATE in bit/s (``1gbit``, ``200mbit``, ``unlimited``),
DELAY the one-way latency between any two hosts (``100us``, ``1ms``; a ping's round trip is
twice that), JITTER a uniform +-spread of it (packets stay in order), LOSS the probability that
a packet is lost.

Who does what, and why not netem.  The usual tool is tc's netem qdisc ("delay 100us rate
1gbit").  But netem is a kernel module that many kernels (containers, small VMs) lack:
`tc qdisc add ... netem` then fails with "Specified qdisc kind is unknown".  The token bucket
filter (tbf) is nearly always there, and it limits a rate but cannot hold a packet back for a
fixed time.  So:

* **bandwidth**: tc's token bucket filter (tbf) on every host's interface, in the kernel,
  on the host's way out (one host's uplink; with two hosts that is both directions of the cable);
* **latency, jitter, loss**: this module's ``Wire``, a small user-space switch.  Every host's
  interface is a TAP device whose other end is a file descriptor of one process (started by
  ``up``, living in the namespace PREFIX-sw, so ``down`` ends it).  It forwards Ethernet frames
  between the hosts like a learning switch and hands each frame over DELAY (+- JITTER) after it
  left its host, or drops it with probability LOSS.

The TAP devices get an MTU of 64000 bytes, so TCP sends ~16 kB-64 kB segments and the switch
handles a few thousand frames per second at 1 Gbit/s (about 1,500-byte frames would be 40 times
as many, too many for a Python loop).  The timing precision is that of a Python loop (tens of
microseconds), which ``python -m launch.lab.fakehosts measure`` shows.
"""
from __future__ import annotations

import ctypes
import fcntl
import heapq
import os
import random
import re
import select
import struct
import sys
import time
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
PR_SET_TIMERSLACK = 29
MTU = 64000

_UNITS_BIT = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class LinkSpec:
    """What each host's cable can do: rate in bit/s (0: unlimited), delay, jitter in seconds."""
    rate: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "LinkSpec":
        """``1gbit:100us``, ``10gbit:20us:5us:0.1%``, ``unlimited``, ``unlimited:1ms``."""
        parts = text.strip().lower().split(":")
        if not 1 <= len(parts) <= 4:
            raise ValueError(f"--link {text!r}: expected RATE[:DELAY[:JITTER[:LOSS%]]], "
                             f"e.g. 1gbit:100us")
        rate = 0.0 if parts[0] in ("", "unlimited", "0") else _number(parts[0], _UNITS_BIT, text)
        delay, jitter = (_number(p, _UNITS_S, text) if p else 0.0 for p in (parts + ["", ""])[1:3])
        loss = 0.0
        if len(parts) == 4:
            m = re.fullmatch(r"([0-9.]+)%", parts[3])
            if not m or float(m[1]) >= 100:
                raise ValueError(f"--link {text!r}: loss {parts[3]!r} must look like 0.1%")
            loss = float(m[1]) / 100
        if jitter > delay:
            raise ValueError(f"--link {text!r}: the jitter must not exceed the delay")
        return cls(rate, delay, jitter, loss)

    @property
    def needs_wire(self) -> bool:
        """Whether packets must be held back or dropped (the user-space switch), not only paced."""
        return self.delay > 0 or self.loss > 0

    def __str__(self) -> str:
        rate = "unlimited" if not self.rate else f"{self.rate / 1e6:g}mbit"
        text = f"{rate}:{self.delay * 1e6:g}us"
        if self.jitter or self.loss:
            text += f":{self.jitter * 1e6:g}us:{self.loss * 100:g}%"
        return text

    def tbf_args(self) -> list[str]:
        """tc arguments for the bandwidth: a token bucket that holds at least two full frames
        (tbf drops a packet larger than its bucket) and up to 20 ms of queue before dropping."""
        burst = max(2 * (MTU + 64), int(self.rate / 8 * 2e-4))
        return ["tbf", "rate", f"{int(self.rate)}bit", "burst", str(burst), "latency", "20ms"]


def _number(text: str, units: dict, whole: str) -> float:
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([a-z]+)", text)
    if not m or m[2] not in units:
        raise ValueError(f"--link {whole!r}: {text!r} needs a unit ({', '.join(units)})")
    return float(m[1]) * units[m[2]]


# ---- entering a network namespace (Python 3.11 has no os.setns) --------------------------------
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into network namespace ``name``."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tap(netns: str, ifname: str) -> int:
    """A TAP device ``ifname`` inside ``netns``; returns its (non-blocking) file descriptor.
    The device lives as long as the descriptor: when the switch process ends, it is gone."""
    enter_netns(netns)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


class Wire:
    """A learning Ethernet switch whose ports deliver each frame ``delay`` (+- ``jitter``)
    after it arrived, keep the frames of every (source, destination) pair in order, and drop
    a frame with probability ``loss``.  ``ports`` are TAP file descriptors, one per host."""

    def __init__(self, ports: list[int], link: LinkSpec, seed: int = 0):
        self.ports, self.link = ports, link
        self.random = random.Random(seed)
        self.where = {}                        # MAC address -> port that sent from it
        self.queue = []                        # heap of (due time, sequence, port, frame)
        self.last_due = {}                     # (from, to) -> due time of its latest frame
        self.sequence = 0

    def destinations(self, source: int, frame: bytes) -> list[int]:
        self.where[frame[6:12]] = source        # learn: this MAC is behind that port
        port = self.where.get(frame[0:6])
        if port is None or frame[0] & 1:        # unknown, broadcast or multicast: flood
            return [p for p in range(len(self.ports)) if p != source]
        return [] if port == source else [port]

    def receive(self, source: int, frame: bytes, now: float) -> None:
        if self.link.loss and self.random.random() < self.link.loss:
            return
        for port in self.destinations(source, frame):
            due = now + self.link.delay
            if self.link.jitter:
                due += self.random.uniform(-self.link.jitter, self.link.jitter)
            due = max(due, self.last_due.get((source, port), 0.0))   # no reordering
            self.last_due[source, port] = due
            heapq.heappush(self.queue, (due, self.sequence, port, frame))
            self.sequence += 1

    def deliver_due(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, _, port, frame = heapq.heappop(self.queue)
            try:
                os.write(self.ports[port], frame)
            except (BlockingIOError, OSError):  # the host is not reading: a lost frame
                pass

    def run(self) -> None:
        """Forward frames until killed."""
        index = {fd: i for i, fd in enumerate(self.ports)}
        while True:
            now = time.monotonic()
            self.deliver_due(now)
            timeout = max(0.0, self.queue[0][0] - time.monotonic()) if self.queue else None
            readable, _, _ = select.select(self.ports, [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                for _ in range(64):             # a fair share per port per round
                    try:
                        frame = os.read(fd, MTU + 64)
                    except BlockingIOError:
                        break
                    self.receive(index[fd], frame, now)


def serve(switch_ns: str, hosts: list[str], ifname: str, link: LinkSpec) -> int:
    """The switch process: TAPs in every host, then itself in ``switch_ns``; prints ``ready``."""
    ports = [open_tap(host, ifname) for host in hosts]
    enter_netns(switch_ns)
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)   # wake within ~1 us, not the default 50 us
    try:   # a NIC does not wait for a core: run before the ranks, which spin while they wait
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (PermissionError, OSError):
        os.nice(-10)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)                          # `up` stops reading; do not die of SIGPIPE
    Wire(ports, link).run()
    return 0


if __name__ == "__main__":   # python -m launch.lab.wire SWITCH_NS IFNAME LINK HOST...
    sys.exit(serve(sys.argv[1], sys.argv[4:], sys.argv[2], LinkSpec.parse(sys.argv[3])))
