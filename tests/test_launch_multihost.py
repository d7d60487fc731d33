"""Runs across machines, simulated: two network namespaces as two hosts (launch/lab/fakehosts.py).

The two "hosts" have their own network stack, host name and address (10.77.0.1 / 10.77.0.2
on a veth pair); hydra's `mpirun` runs on the first and starts the second rank's proxy
through launch/lab/netns-launch, exactly as it would through ssh on a cluster. Checked:

* the wrapper runs a command on the named host (its host name) and refuses unknown hosts;
* an MPI probe job: the ranks see different host names, node-local size 1 each, and their
  TCP connections run between the two hosts' addresses (no shared memory, no root netns);
* a 2-rank `dist.train` across the two hosts exits 0, its final parameters equal those of
  the single-host `mpirun -n 2` run (asserted < 1e-5 relative, reported if bitwise), and
  at least one gradient allreduce per step worth of bytes crossed the veth link;
* over a limited link (200 Mbit/s, 1 ms one way: tc's tbf and launch/lab/wire.py's switch) a TCP
  round trip takes ~2 ms and a bulk transfer runs at ~200 Mbit/s, and a 4-rank `dist.train` on
  2 hosts x 2 ranks (two ranks per host share memory) with the hierarchical update ends with
  the parameters of the flat sharded update and of a 4-rank single-host run.

Needs root (network namespaces); skipped, with that reason, only when the machine forbids
creating them. Namespaces get unique names per run and are removed even when a test fails.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import subprocess
import sys
import time

import pytest

from launch.lab.fakehosts import IFACE, WRAPPER, FakeHosts, FakeHostsError, _ip, measure
from launch.lab.fakehosts import netns_names as _netns
from launch.lab.wire import LinkSpec
from tests.dist_helpers import REPO, env, rel_diff, run_job, small_run_args, theta_of

pytestmark = pytest.mark.timeout(180)

_FORBIDDEN = ("Operation not permitted", "Permission denied")


def make_hosts(request, link: LinkSpec | None = None) -> FakeHosts:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add / unshare --uts); "
                    f"running as uid {os.geteuid()}")
    fh = FakeHosts(f"mpg{secrets.token_hex(3)}", hosts=2, link=link)
    request.addfinalizer(fh.down)      # registered first: also cleans up a half-made `up`
    try:
        fh.up()
    except FakeHostsError as err:
        if any(s in str(err) for s in _FORBIDDEN):
            pytest.skip(f"this machine forbids network namespaces: {err}")
        raise
    uts = subprocess.run(["unshare", "--uts", "true"], capture_output=True, text=True, timeout=10)
    if uts.returncode != 0 and any(s in uts.stderr for s in _FORBIDDEN):
        pytest.skip(f"this machine forbids UTS namespaces: {uts.stderr.strip()}")
    return fh


@pytest.fixture(scope="module")
def hosts(request):
    return make_hosts(request)


LIMITED = LinkSpec.parse("200mbit:1ms")


@pytest.fixture(scope="module")
def limited_hosts(request):
    return make_hosts(request, LIMITED)


def _env(fh: FakeHosts) -> dict:
    return fh.env(base=env())


def _tx_rx(host: str) -> tuple[int, int]:
    link = json.loads(_ip("-n", host, "-j", "-s", "link", "show", "dev", IFACE).stdout)[0]
    stats = link.get("stats64") or link["stats"]
    return stats["tx"]["bytes"], stats["rx"]["bytes"]


def test_the_wrapper_runs_commands_on_the_named_host(hosts):
    a, b = hosts.names
    out = subprocess.run([str(WRAPPER), "-x", b, "hostname; ip -4 -o addr show dev", IFACE],
                         env=_env(hosts), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == b
    assert f"inet {hosts.addresses()[b]}/24" in lines[1]
    bad = subprocess.run([str(WRAPPER), "-x", f"{hosts.prefix}-zz", "true"], env=_env(hosts),
                         capture_output=True, text=True, timeout=20)
    assert bad.returncode == 255 and "no such fake host" in bad.stderr


def test_ranks_on_two_hosts_talk_over_the_fake_network(hosts):
    cmd = hosts.mpirun_command(["-n", "2", sys.executable, "-m", "launch.lab.fakehosts", "probe"])
    out = subprocess.run(cmd, env=_env(hosts), cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    probes = {}
    for line in out.stdout.splitlines():
        m = re.match(r"PROBE rank=(\d) size=2 host=(\S+) local_size=(\d+) sum_ok=(\w+) tcp=(\S+)",
                     line)
        if m:
            probes[int(m[1])] = m
    assert sorted(probes) == [0, 1], out.stdout
    addr = hosts.addresses()
    for rank, host in enumerate(hosts.names):
        m = probes[rank]
        assert m[2] == host                       # different host names, in placement order
        assert m[3] == "1", "ranks on different hosts must not share a node (shared memory)"
        assert m[4] == "True"
        conns = [c.split("->") for c in m[5].split(",") if c != "-"]
        endpoints = [e.rsplit(":", 1)[0] for c in conns for e in c]
        assert endpoints and all(e in addr.values() for e in endpoints), m[5]
        other = addr[hosts.names[1 - rank]]
        assert any(c[0].startswith(addr[host] + ":") and c[1].startswith(other + ":")
                   for c in conns), f"rank {rank}: no TCP connection to the other host: {m[5]}"


def test_training_across_two_hosts_matches_one_host(hosts, mnist_h5, tmp_path):
    t0 = time.monotonic()
    one = run_job(2, small_run_args(mnist_h5, tmp_path, "onehost"), timeout=120)
    t_one = time.monotonic() - t0
    assert one.returncode == 0, one.stderr

    b = hosts.names[1]
    tx0, rx0 = _tx_rx(b)
    cmd = hosts.mpirun_command(["-n", "2", sys.executable, "-m", "dist.train",
                                *small_run_args(mnist_h5, tmp_path, "twohosts")])
    t0 = time.monotonic()
    two = subprocess.run(cmd, env=_env(hosts), cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    t_two = time.monotonic() - t0
    assert two.returncode == 0, two.stdout + two.stderr
    tx1, rx1 = _tx_rx(b)

    final = "ckpt-e002-s00000.h5"
    theta_one = theta_of(tmp_path / "onehost" / final)
    theta_two = theta_of(tmp_path / "twohosts" / final)
    diff = rel_diff(theta_two, theta_one)
    bitwise = bool((theta_one == theta_two).all())
    print(f"\nsingle host {t_one:.1f}s, two hosts {t_two:.1f}s; rel diff {diff:.3g}"
          f" ({'bitwise equal' if bitwise else 'not bitwise'}); {b} {IFACE}: "
          f"tx {tx1 - tx0} B, rx {rx1 - rx0} B")
    assert diff < 1e-5
    # 24 steps, each a gradient allreduce of every parameter (>= 4 bytes each) that host b
    # must both send and receive: all of it went over the veth link.
    at_least = 24 * 4 * theta_one.size
    assert tx1 - tx0 > at_least and rx1 - rx0 > at_least, (tx1 - tx0, rx1 - rx0, at_least)


def test_a_limited_link_has_its_latency_and_bandwidth(limited_hosts):
    got = measure(limited_hosts, seconds=1.0)
    print(f"\n{LIMITED}: {got}")
    # One way 1 ms, so a round trip >= 2 ms; the Python switch adds tens of us, a loaded
    # machine more. The bulk rate is tbf's, up to TCP's ramp-up and the acknowledgement.
    assert 2 * LIMITED.delay * 1e6 <= got["rtt_min_us"] <= got["rtt_us"] < 2 * LIMITED.delay * 1e6 + 3000
    assert 0.6 * LIMITED.rate / 1e6 < got["mbit_s"] < 1.05 * LIMITED.rate / 1e6


def test_two_hosts_of_two_ranks_over_a_limited_link_match_one_host(limited_hosts, mnist_h5,
                                                                  tmp_path):
    """2 hosts x 2 ranks: dist.train picks the hierarchical update (shared memory in the host,
    MPI across); it ends with the flat sharded update's parameters (sums in another order:
    within float rounding -- bitwise where MPICH adds in the same order, as measured here)
    and with those of 4 ranks on one host."""
    one = run_job(4, small_run_args(mnist_h5, tmp_path, "onehost"), timeout=150)
    assert one.returncode == 0, one.stderr
    b = limited_hosts.names[1]
    sent = {}
    for name, extra in (("hierarchical", ()), ("flat", ("--set", "comm.update=sharded"))):
        tx0, _ = _tx_rx(b)
        cmd = limited_hosts.mpirun_command(
            ["-n", "4", sys.executable, "-m", "dist.train",
             *small_run_args(mnist_h5, tmp_path, name, *extra)], slots=2)
        job = subprocess.run(cmd, env=_env(limited_hosts), cwd=REPO, capture_output=True,
                             text=True, timeout=150)
        assert job.returncode == 0, job.stdout + job.stderr
        assert f"{'hierarchical' if name == 'hierarchical' else 'sharded'} update" in job.stdout
        sent[name] = _tx_rx(b)[0] - tx0
    final = "ckpt-e002-s00000.h5"
    theta = {name: theta_of(tmp_path / name / final) for name in ("onehost", "hierarchical", "flat")}
    diff = rel_diff(theta["hierarchical"], theta["flat"])
    bitwise = theta["hierarchical"].tobytes() == theta["flat"].tobytes()
    print(f"\n2 hosts x 2 ranks over {LIMITED}: hierarchical vs flat rel diff {diff:.3g} "
          f"({'bitwise' if bitwise else 'not bitwise'}), vs one host "
          f"{rel_diff(theta['hierarchical'], theta['onehost']):.3g}; {b} sent {sent} B")
    assert diff < 1e-5
    assert rel_diff(theta["hierarchical"], theta["onehost"]) < 1e-5
    assert sent["hierarchical"] > 24 * 4 * theta["onehost"].size / 2   # half a gradient a step


def test_link_specs_are_read_or_refused_in_one_line():
    def fields(text):
        return pytest.approx(dataclasses.astuple(LinkSpec.parse(text)))
    assert fields("1gbit:100us") == (1e9, 1e-4, 0, 0)
    assert fields("10gbit:20us:5us:0.1%") == (1e10, 2e-5, 5e-6, 1e-3)
    assert fields(str(LinkSpec(1e9, 1e-4))) == (1e9, 1e-4, 0, 0)
    assert LinkSpec.parse("unlimited") == LinkSpec() and not LinkSpec().needs_wire
    for bad, says in (("1gbps:100us", "needs a unit"), ("1gbit:100", "needs a unit"),
                      ("1gbit:10us:20us", "jitter must not exceed"), ("1gbit:1ms:0us:5", "0.1%"),
                      ("1:2:3:4:5", "RATE[:DELAY")):
        with pytest.raises(ValueError, match=re.escape(says)):
            LinkSpec.parse(bad)
    out = subprocess.run([sys.executable, "-m", "launch.lab.fakehosts", "up", "--link", "fast"],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--link 'fast'" in out.stderr


def test_the_scaling_benchmark_runs_over_limited_links(limited_hosts, mnist_h5, tmp_path):
    """launch.lab.bench --links (launch/lab/scaling.py), tiny: 1 and 2 hosts, unlimited and limited
    links, every update kind; the JSON has the rows, a fit per link and the plot exists."""
    out = tmp_path / "scaling.json"
    before = set(_netns())
    job = subprocess.run([sys.executable, "-m", "launch.lab.bench",
                          "--links", f"unlimited,{LIMITED}", "--presets", "mlp", "--hosts", "1,2", "--ranks-per-host", "1",
                          "--quick", "--data", str(mnist_h5), "--out", str(out),
                          "--plot", str(tmp_path / "scaling.png")],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout + job.stderr
    result = json.loads(out.read_text())
    kinds = {(r["hosts"], r["link"]): set(r["modes"]) for r in result["rows"]}
    assert kinds == {(1, "local"): {"auto"}, (2, "unlimited"): {"sharded", "overlapped"},
                     (2, str(LIMITED)): {"sharded", "overlapped"}}
    limited = next(r for r in result["rows"] if r["link"] == str(LIMITED))
    assert limited["modes"]["sharded"]["wait_ms"] > 2 * LIMITED.delay * 1e3   # it did wait
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    assert set(_netns()) <= before, "the benchmark left hosts behind"
