"""The per-rank timeline (run.timeline, dist/timeline.py) and the breakdown of every run.

* a 2-rank run writes timeline.json that keeps the trace-event format's rules: complete
  events ("X") with pid, tid, ts and dur >= 0, properly nested on each track, every rank a
  named process, every track named, every phase and every layer present in every step; and
  the clocks are aligned within the uncertainty they measured: no rank leaves a collective
  before every rank (on rank 0's clock, give or take) has entered it;
* with the timeline on, training is bitwise what it is with it off (the instrumentation only
  reads clocks), and every run's final.json has its wall-time breakdown;
* with comm.update = "overlapped", gradient buckets start their reduction inside backward;
* with two model copies per rank, each copy is a track of its own;
* two fake hosts over a limited link (launch/lab/fakehosts.py, root) give one trace with both;
* a bad value for the keys is one line naming it.

The straggler (a rank slowed on purpose, tests/slow_rank.py) is in tests/test_launch_report.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest

from launch.lab.wire import LinkSpec
from tests.dist_helpers import (REPO, assert_one_line_error, env, run_job, small_run_args,
                                theta_of)

pytestmark = pytest.mark.timeout(240)

WINDOW = ("--set", "run.timeline=4", "--set", "run.timeline_start=3")
FINAL = "ckpt-e002-s00000.h5"
LAYER_NAMES = ["conv 0", "batchnorm 1", "relu 2", "maxpool 3", "flatten 4", "dense 5",
               "batchnorm 6", "relu 7", "dropout 8", "dense 9"]   # tests.dist_helpers' net
PHASES = ("data", "forward", "backward", "gradient sum", "update", "gather", "batch-norm sum")


def check_trace(trace: dict) -> dict:
    """The trace-event format's rules, as Perfetto and chrome://tracing read the JSON object
    form; returns the complete events by (pid, tid)."""
    assert isinstance(trace["traceEvents"], list) and trace["displayTimeUnit"] in ("ms", "ns")
    named_processes, named_tracks, tracks = {}, set(), defaultdict(list)
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M"), e
        assert isinstance(e["pid"], int) and e["pid"] >= 0 and isinstance(e["tid"], int), e
        assert isinstance(e["name"], str) and isinstance(e.get("args", {}), dict), e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "process_sort_index", "thread_name"), e
            if e["name"] == "process_name":
                named_processes[e["pid"]] = e["args"]["name"]
            if e["name"] == "thread_name":
                named_tracks.add((e["pid"], e["tid"]))
        else:
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
            assert isinstance(e["cat"], str), e
            tracks[e["pid"], e["tid"]].append(e)
    assert set(tracks) <= named_tracks, set(tracks) - named_tracks
    for (pid, _), events in tracks.items():
        assert pid in named_processes
        # Complete events on one track must nest: each one ends before the one it starts
        # in does (the viewer draws them as a stack; an overlap would be drawn wrong).
        stack = []
        for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1] <= e["ts"] + 0.01:   # touching is not overlapping
                stack.pop()
            assert not stack or e["ts"] + e["dur"] <= stack[-1] + 0.01, (e, stack[-1])
            stack.append(e["ts"] + e["dur"])
    return tracks


def check_clocks_aligned(trace: dict) -> float:
    """No rank leaves a collective (or finishes a bucket's reduction) before every rank has
    entered it: on rank 0's clock, each exit is after every entry of the same meeting, give or
    take the two ranks' measured uncertainties. Returns the largest uncertainty."""
    ranks = trace["otherData"]["mpigrad"]["ranks"]
    slack = {r["rank"]: r["clock_uncertainty_us"] for r in ranks}
    meetings = defaultdict(dict)
    for pid in slack:
        count = defaultdict(int)
        mine = sorted((e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == pid
                       and e["cat"] in ("collective", "bucket")), key=lambda e: e["ts"])
        for e in mine:
            key = e["args"]["step"], e["tid"]
            meetings[key + (count[key],)][pid] = e
            count[key] += 1
    assert meetings
    for at in meetings.values():
        assert set(at) == set(slack)
        assert len({e["name"] for e in at.values()}) == 1   # the same collective everywhere
        for p, leaving in at.items():
            for q, entering in at.items():
                assert leaving["ts"] + leaving["dur"] >= \
                    entering["ts"] - slack[p] - slack[q] - 1.0, (leaving, entering)
    return max(slack.values())


@pytest.fixture(scope="module")
def even(tmp_path_factory, mnist_h5):
    run = tmp_path_factory.mktemp("timeline")
    args = small_run_args(mnist_h5, run, "even", *WINDOW)
    job = run_job(2, args)
    assert job.returncode == 0, job.stdout + job.stderr
    return run / "even", job.stdout


def test_the_trace_keeps_the_format_and_holds_every_rank_and_phase(even):
    run, stdout = even
    assert f"timeline of steps 3-6: {run / 'timeline.json'}" in stdout
    trace = json.loads((run / "timeline.json").read_text())
    tracks = check_trace(trace)
    info = trace["otherData"]["mpigrad"]
    assert info["window"] == [3, 7] and [r["rank"] for r in info["ranks"]] == [0, 1]
    for rank in (0, 1):
        main = tracks[rank, 0]
        steps = sorted(e["args"]["step"] for e in main if e["cat"] == "step")
        assert steps == [3, 4, 5, 6]
        for step in steps:
            names = {e["name"] for e in main if e["args"]["step"] == step}
            assert set(PHASES) <= names, (rank, step, set(PHASES) - names)
            for phase in ("forward", "backward"):
                layers = [e["name"] for e in main
                          if e["cat"] == phase and e["args"]["step"] == step]
                expected = LAYER_NAMES if phase == "forward" else LAYER_NAMES[::-1]
                assert layers == expected, (phase, layers)   # backward stops at conv 0
    assert any(e.get("cat") == "wait" for e in trace["traceEvents"])
    uncertainty = check_clocks_aligned(trace)
    assert 0 < uncertainty < 5000                        # one machine: microseconds


def test_timeline_on_trains_bitwise_as_off_and_every_run_has_its_breakdown(even, mnist_h5,
                                                                           tmp_path):
    run, stdout = even
    off = run_job(2, small_run_args(mnist_h5, tmp_path, "off"))
    assert off.returncode == 0, off.stderr
    assert theta_of(run / FINAL).tobytes() == theta_of(tmp_path / "off" / FINAL).tobytes()
    assert not (tmp_path / "off" / "timeline.json").exists()
    for out, folder in ((stdout, run), (off.stdout, tmp_path / "off")):
        assert "where the " in out and "forward by layer: " in out
        b = json.loads((folder / "final.json").read_text())["wall_breakdown"]
        parts = ("startup", "data", "forward", "backward", "gradient_sum", "update",
                 "evaluation", "checkpoints", "final_test", "other")
        assert all(b[p] >= 0 for p in parts)
        assert sum(b[p] for p in parts) == pytest.approx(b["wall"], rel=0.01)
        assert set(b["forward_by_layer"]) == set(LAYER_NAMES)


def test_overlapped_buckets_reduce_inside_backward(tmp_path, mnist_h5):
    args = small_run_args(mnist_h5, tmp_path, "overlap", *WINDOW, "--set",
                          "comm.update=overlapped", "--set", "comm.bucket_mb=0.01")
    job = run_job(2, args)
    assert job.returncode == 0, job.stdout + job.stderr
    trace = json.loads((tmp_path / "overlap" / "timeline.json").read_text())
    tracks = check_trace(trace)
    check_clocks_aligned(trace)
    assert trace["otherData"]["mpigrad"]["update"] == "overlapped"
    for rank in (0, 1):
        backward = {e["args"]["step"]: e for e in tracks[rank, 0] if e["name"] == "backward"}
        buckets = [e for (pid, tid), events in tracks.items() if pid == rank and tid >= 100
                   for e in events]
        assert len({e["tid"] for e in buckets}) >= 2
        inside = [e for e in buckets if e["ts"] < backward[e["args"]["step"]]["ts"]
                  + backward[e["args"]["step"]]["dur"]]
        assert len(inside) >= 4, "no bucket started its reduction during backward"


def test_each_model_copy_is_a_track(tmp_path, mnist_h5):
    job = run_job(1, small_run_args(mnist_h5, tmp_path, "copies", *WINDOW,
                                    "--set", "run.threads=2"))
    assert job.returncode == 0, job.stdout + job.stderr
    tracks = check_trace(json.loads((tmp_path / "copies" / "timeline.json").read_text()))
    assert {tid for pid, tid in tracks} == {0, 1}
    assert {e["name"] for e in tracks[0, 1] if e["cat"] == "forward"} == set(LAYER_NAMES)


def test_two_fake_hosts_over_a_limited_link_give_one_trace(request, mnist_h5, tmp_path):
    from tests.test_launch_multihost import make_hosts
    link = LinkSpec.parse("1gbit:200us")
    hosts = make_hosts(request, link)
    cmd = hosts.mpirun_command(["-n", "2", sys.executable, "-m", "dist.train",
                                *small_run_args(mnist_h5, tmp_path, "hosts", *WINDOW)])
    job = subprocess.run(cmd, env=hosts.env(base=env()), cwd=REPO, capture_output=True,
                         text=True, timeout=150)
    assert job.returncode == 0, job.stdout + job.stderr
    trace = json.loads((tmp_path / "hosts" / "timeline.json").read_text())
    check_trace(trace)
    info = trace["otherData"]["mpigrad"]
    assert [r["host"] for r in info["ranks"]] == hosts.names and info["update"] == "overlapped"
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {f"rank {i} ({h})" for i, h in enumerate(hosts.names)}
    uncertainty = check_clocks_aligned(trace)
    assert uncertainty >= link.delay * 1e6 * 0.9          # a round trip crosses the link twice


@pytest.mark.parametrize("key, value", [("run.timeline", "-1"), ("run.timeline", "5000"),
                                        ("run.timeline_start", "-3")])
def test_bad_timeline_keys_are_one_line(key, value, tmp_path):
    job = subprocess.run([sys.executable, "-m", "dist.train", "--set", f"{key}={value}",
                          "--set", f"run.dir={tmp_path}"], cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=60)
    assert_one_line_error(job, f"{key}={value}")
    assert not any(tmp_path.iterdir())
