"""Where a run's time goes: a breakdown of every run, and a per-rank timeline of a few steps.

    mpirun -n 2 python -m dist.train --set run.timeline=8          # steps 10..17 recorded
    mpirun -n 2 python -m dist.train --set run.timeline=4 --set run.timeline_start=50
    python -m launch.report runs/<name>     # timeline.png, each rank's phases, the straggler

**The breakdown (every run).** dist.train's ``Clock`` charges the time of each phase of a step
to a name ("data", "forward", "backward", ...) and hands every lap to ``Timeline.lap``, which
adds them up over the run. Every ``SAMPLE_EVERY``-th step the model's layers are also timed
one by one (``LayerTimer``), which splits the forward and backward totals by layer. At the end
rank 0 prints a few lines -- startup, data, forward and backward by layer, the gradient sum,
the update, evaluation, checkpoints, the final test -- and final.json keeps them
(``wall_breakdown``).

**The timeline (``run.timeline = N``, off by default).** For N steps from the global step
``run.timeline_start``, every rank records when each phase began and ended: the data, forward
and backward of every layer on every model copy (one track per thread, core/replicas.py),
batch norm's sums over the ranks, the gradient sum (with the overlapped update, each bucket's
reduction from its start during backward to its completion), the optimizer update, the
gather, and, on rank 0, validation and checkpoint writes. At the start of the run each rank
measures its clock against rank 0's by a few ping-pongs (``align_clocks``: the offset of the
round with the shortest round trip, and half that round trip as its uncertainty), so spans of
different hosts share one time axis. At the window's end the ranks send their spans to rank
0, which marks in every collective how long each rank waited for the last one to arrive, and
writes ``timeline.json`` into the run folder in Chrome's trace-event format (Perfetto and
chrome://tracing open it): one process per rank, named with its host, one track per model
copy, one per gradient bucket.

Nothing in core/ knows about this: the layers' forward and backward, batch norm's reduce and
the update's callbacks are wrapped from here for the steps that are timed, and unwrapped
after. The arithmetic is untouched, so training is bitwise the same whatever is recorded.
Read back by launch/trace.py; tested by tests/test_dist_timeline.py.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections import defaultdict
from pathlib import Path

from dist.update import AllreduceUpdate

IMPORTED = time.perf_counter()
SAMPLE_EVERY = 10          # per-layer times for the breakdown: every this many steps
PING_PONGS = 8             # rounds of the clock measurement, per rank
BUCKET_TRACK = 100         # bucket i of the overlapped update is drawn on track 100 + i
now = time.perf_counter

# The Clock's lap names as a reader of the timeline and the breakdown calls them.
PHASES = {"data": "data", "forward": "forward", "backward": "backward",
          "allreduce": "gradient sum", "optimizer": "update", "gather": "gather",
          "tally": "tally", "other": "other", "eval": "validation", "checkpoint": "checkpoint"}


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), else since this module's import."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")   # field 22: starttime
    except (OSError, ValueError, IndexError):
        return now() - IMPORTED


def align_clocks(comm, rounds: int = PING_PONGS) -> list[tuple[float, float]]:
    """(offset, uncertainty) in seconds of every rank's clock against rank 0's (collective).

    Rank 0 reads its clock (t0), sends to rank r, which answers with its own reading; rank 0
    reads again (t1). Rank r read its clock somewhere between t0 and t1 of rank 0's, so its
    offset is its reading minus (t0 + t1) / 2, give or take (t1 - t0) / 2. The round with the
    shortest round trip is kept (NTP's rule: a slow round was delayed on one leg)."""
    if comm.size == 1:
        return [(0.0, 0.0)]
    best = [(0.0, 0.0)]
    for peer in range(1, comm.size):
        if comm.rank == 0:
            rounds_seen = []
            for _ in range(rounds):
                t0 = now()
                comm.send(None, peer)
                theirs = comm.recv(peer)
                t1 = now()
                rounds_seen.append((t1 - t0, theirs - (t0 + t1) / 2))
            round_trip, offset = min(rounds_seen)
            best.append((offset, round_trip / 2))
        elif comm.rank == peer:
            for _ in range(rounds):
                comm.recv(0)
                comm.send(now(), 0)
    return comm.bcast(best)


class LayerTimer:
    """While installed, every layer of every model copy records its forward and backward as a
    span (name, phase, copy, start, end): a wrapper on the layer object, removed again after."""

    def __init__(self, copies):
        self.copies, self.spans = copies, []

    def install(self) -> None:
        for copy_index, model in enumerate(self.copies):
            for layer in model.layers:
                for phase in ("forward", "backward"):
                    setattr(layer, phase, self._timed(getattr(layer, phase), layer, phase,
                                                      copy_index))

    def remove(self) -> None:
        for model in self.copies:
            for layer in model.layers:
                layer.__dict__.pop("forward", None)    # the class's methods show through again
                layer.__dict__.pop("backward", None)

    def _timed(self, method, layer, phase: str, copy_index: int):
        name, spans = f"{layer.type_name} {layer.index}", self.spans

        def timed(*args, **kwargs):
            start = now()
            result = method(*args, **kwargs)
            spans.append((name, phase, copy_index, start, now()))   # list.append: thread-safe
            return result
        return timed


class BucketWatch:
    """The overlapped update's buckets, seen from outside: when each one's allreduce starts
    (in ``grad_ready``, during backward) and when it is found complete. MPICH completes a
    non-blocking collective only while the rank is inside MPI, so completion is observed at
    the polls: between layers, and in a poll loop where ``reduce_gradient`` would wait."""

    def __init__(self, comm, update, record):
        self.comm, self.update, self.record = comm, update, record
        self.started = {}                          # bucket index -> start time

    def install(self) -> None:
        self.update.grad_ready, self.update.reduce_gradient = self.grad_ready, self.reduce_gradient

    def remove(self) -> None:
        self.update.__dict__.pop("grad_ready", None)
        self.update.__dict__.pop("reduce_gradient", None)

    def grad_ready(self, p: int) -> None:
        update, start = self.update, now()
        before = len(update.in_flight)
        type(update).grad_ready(update, p)
        for i in range(before, len(update.in_flight)):
            self.started[i] = start
        self.poll()

    def poll(self) -> None:
        for i, start in list(self.started.items()):
            if self.comm.test(self.update.in_flight[i]):
                lo, hi = self.update.buckets[i]
                self.record(f"bucket {i}", "bucket", BUCKET_TRACK + i, start, now(),
                            {"parameters": [lo, hi]})
                del self.started[i]

    def reduce_gradient(self) -> None:
        self.grad_ready(0)                         # starts what backward did not
        while self.started:
            os.sched_yield()
            self.poll()
        type(self.update).reduce_gradient(self.update)   # all complete: returns at once


class Timeline:
    """The run's phase totals (always) and, for ``steps`` steps from ``start``, every rank's
    spans, written by rank 0 as ``run_dir/timeline.json``. Used by dist/train.py:

        timeline.begin_step(global_step) ... clock.lap(...) ... timeline.end_step()
        timeline.finish()                   # collective: closes a window still open
    """

    def __init__(self, comm, steps: int, start: int, net, model, update, run_dir: Path,
                 setup_started: float):
        self.comm, self.model, self.update, self.run_dir = comm, model, update, run_dir
        self.window = range(start, start + steps)
        self.process_started = now() - process_age()
        self.setup_started, self.loop_started = setup_started, now()
        self.copies = list(getattr(net, "copies", [net]))
        self.layers = LayerTimer(self.copies)
        self.totals = defaultdict(float)           # seconds per phase, the whole run
        self.layer_seconds = defaultdict(float)    # (phase, layer) seconds on timed steps
        self.recording = self.timing_layers = self.written = False
        self.spans, self.step, self.last_lap = [], -1, now()
        self.clocks = align_clocks(comm) if steps else [(0.0, 0.0)] * comm.size
        # The laps that are collectives, which no rank leaves before every rank has entered:
        # the gradient sum (not the overlapped one: it waits for buckets that may have been
        # summed before a slower rank's backward ended; the buckets are the meetings then),
        # and the gather of the kinds that gather (the allreduce kinds' is a no-op).
        overlapped = update.transport == "overlapped"
        gathers = type(update).gather_parameters is not AllreduceUpdate.gather_parameters
        self.collectives = ({"gradient sum"} if not overlapped else set()) | \
            ({"gather"} if gathers else set()) if comm.size > 1 else set()
        self.buckets = BucketWatch(comm, update, self.record) \
            if steps and update.transport == "overlapped" else None

    # -- what dist.train calls -----------------------------------------------------------
    def lap(self, name: str, start: float, end: float) -> None:
        """The Clock's lap: counted always, recorded as a span while the window is open."""
        self.totals[name] += end - start
        self.last_lap = end           # a step's spans run from one lap to the next: no overlap
        if self.recording:
            phase = PHASES.get(name, name)
            self.record(phase, "collective" if phase in self.collectives else "phase", 0, start, end)

    def begin_step(self, step: int) -> None:
        if self.recording and step not in self.window:
            self.close_window()                     # collective: every rank at this step
        if step in self.window and not self.recording:
            self.recording, self.spans = True, []
        self.step, self.step_started = step, self.last_lap   # the clock's lap before the step
        self.timing_layers = self.recording or step % SAMPLE_EVERY == 0
        if self.timing_layers:
            self.layers.install()
        if self.recording:
            self._wrap_collectives()

    def end_step(self) -> None:
        if self.recording:
            self._unwrap_collectives()
            self.record(f"step {self.step}", "step", 0, self.step_started, self.last_lap)
        if self.timing_layers:
            self.layers.remove()
            for name, phase, copy_index, start, end in self.layers.spans:
                if copy_index == 0:                  # the other copies do the same work
                    self.layer_seconds[phase, name] += end - start
                if self.recording:
                    self.record(name, phase, copy_index, start, end)
            self.layers.spans = []

    def finish(self) -> None:
        """At the end of training (collective): close the window if it is still open."""
        if self.recording:
            self.close_window()

    # -- recording ---------------------------------------------------------------------
    def record(self, name: str, cat: str, track: int, start: float, end: float,
               args: dict | None = None) -> None:
        self.spans.append((name, cat, track, start, end, {"step": self.step, **(args or {})}))

    def _wrap_collectives(self) -> None:
        """Batch norm's sums over the ranks (the model's reduce, which Replicas also calls)
        and the overlapped update's buckets, as spans."""
        outer = self.model.reduce

        def timed_reduce(vector):
            start = now()
            total = outer(vector)
            self.record("batch-norm sum", "collective", 0, start, now())
            return total
        self.outer_reduce, self.model.reduce = outer, timed_reduce
        if self.buckets is not None:
            self.buckets.install()

    def _unwrap_collectives(self) -> None:
        self.model.reduce = self.outer_reduce
        if self.buckets is not None:
            self.buckets.remove()

    def close_window(self) -> None:
        """Every rank sends its spans, on rank 0's clock, to rank 0, which writes the trace."""
        self.recording = False
        offset, uncertainty = self.clocks[self.comm.rank]
        mine = {"rank": self.comm.rank, "host": socket.gethostname(), "threads": len(self.copies),
                "clock_offset_s": offset, "clock_uncertainty_s": uncertainty,
                "spans": [(n, c, k, s - offset, e - offset, a) for n, c, k, s, e, a in self.spans]}
        ranks = self.comm.gather(mine)
        self.spans = []
        if self.comm.is_root:
            trace = trace_events(ranks, self.window, self.update.transport,
                                 getattr(self.update, "buckets", []))
            path = self.run_dir / "timeline.json"
            partial = path.with_suffix(".json.tmp")
            partial.write_text(json.dumps(trace) + "\n")
            os.replace(partial, path)
            print(f"timeline of steps {self.window.start}-{self.window.stop - 1}: {path} "
                  f"(python -m launch.report {self.run_dir})", flush=True)
        self.written = True

    # -- the breakdown ---------------------------------------------------------------------
    def breakdown(self, final_test_seconds: float) -> dict:
        """Where this rank's wall time went, in seconds (final.json's ``wall_breakdown``)."""
        t = self.totals
        parts = {"startup": self.loop_started - self.process_started,
                 "data": t["data"], "forward": t["forward"], "backward": t["backward"],
                 "gradient_sum": t["allreduce"] + t["gather"], "update": t["optimizer"],
                 "evaluation": t["eval"], "checkpoints": t["checkpoint"],
                 "final_test": final_test_seconds}
        wall = now() - self.process_started
        parts["other"] = max(wall - sum(parts.values()), 0.0)
        by_layer = {}
        for phase in ("forward", "backward"):
            timed = {name: s for (p, name), s in self.layer_seconds.items() if p == phase}
            whole = sum(timed.values()) or 1.0       # shares of the phase, from timed steps
            by_layer[phase] = {name: t[phase] * s / whole for name, s in timed.items()}
        return {"wall": wall, **parts,
                "startup_imports_and_mpi": self.setup_started - self.process_started,
                "forward_by_layer": by_layer["forward"],
                "backward_by_layer": by_layer["backward"],
                "layers_timed_every": SAMPLE_EVERY}


def breakdown_lines(b: dict, top: int = 4) -> list[str]:
    """A handful of lines for the end of a run."""
    def s(x):
        return f"{x:.1f}s" if x >= 0.95 else f"{x * 1000:.0f}ms"

    def layers(d):
        whole = sum(d.values()) or 1.0
        ranked = sorted(d.items(), key=lambda kv: -kv[1])
        shown = [f"{name} {100 * sec / whole:.0f}%" for name, sec in ranked[:top]]
        rest = sum(sec for _, sec in ranked[top:])
        return ", ".join(shown + ([f"{len(ranked) - top} more {100 * rest / whole:.0f}%"]
                                  if rest else []))
    imports = b["startup_imports_and_mpi"]
    return [
        f"where the {s(b['wall'])} went (rank 0): startup {s(b['startup'])} (imports and MPI "
        f"{s(imports)}; config, data file, model {s(b['startup'] - imports)}), data "
        f"{s(b['data'])}, forward {s(b['forward'])}, loss and backward {s(b['backward'])},",
        f"  gradient sum {s(b['gradient_sum'])}, update {s(b['update'])}, evaluation "
        f"{s(b['evaluation'])}, checkpoints {s(b['checkpoints'])}, final test "
        f"{s(b['final_test'])}, other {s(b['other'])}",
        f"  forward by layer: {layers(b['forward_by_layer'])}",
        f"  backward by layer: {layers(b['backward_by_layer'])} (every "
        f"{b['layers_timed_every']}th step timed)"]


def trace_events(ranks: list[dict], window: range, transport: str, buckets) -> dict:
    """The trace-event JSON of the ranks' spans (seconds on rank 0's clock): complete events
    ("ph": "X", microseconds from the window's first span), names of processes and tracks
    ("M"), and in every collective a "wait" span: from the rank's arrival to the last rank's."""
    origin = min((s[3] for r in ranks for s in r["spans"]), default=0.0)
    events = []
    for r in ranks:
        pid = r["rank"]
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                       "args": {"name": f"rank {pid} ({r['host']})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                       "args": {"sort_index": pid}})
        tracks = {s[2] for s in r["spans"]} | {0}
        for track in sorted(tracks):
            name = f"bucket {track - BUCKET_TRACK} reduction" if track >= BUCKET_TRACK \
                else f"thread {track}: model copy {track}"
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": track,
                           "args": {"name": name}})
        for name, cat, track, start, end, args in r["spans"]:
            events.append(complete_event(name, cat, pid, track, start - origin, end - origin,
                                         args))
    events += wait_events(ranks, origin)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"mpigrad": {
                "window": [window.start, window.stop], "update": transport,
                "buckets": [list(b) for b in buckets],
                "ranks": [{"rank": r["rank"], "host": r["host"], "threads": r["threads"],
                           "clock_offset_us": r["clock_offset_s"] * 1e6,
                           "clock_uncertainty_us": r["clock_uncertainty_s"] * 1e6}
                          for r in ranks]}}}


def wait_events(ranks: list[dict], origin: float) -> list[dict]:
    """Every collective is entered by every rank, in the same order within a step: the n-th
    collective of step k is one meeting. A rank that arrives before the last one waits for it
    (from its arrival to the last arrival, as far as its span lasts)."""
    meetings = defaultdict(dict)                  # (step, n) -> rank -> (start, end)
    for r in ranks:
        count = defaultdict(int)
        for name, cat, track, start, end, args in sorted(r["spans"], key=lambda s: s[3]):
            if cat == "collective" and track == 0:
                n = count[args["step"]]
                count[args["step"]] += 1
                meetings[args["step"], n][r["rank"]] = (name, start, end)
    events = []
    for (step, _), arrivals in meetings.items():
        if len(arrivals) < len(ranks):
            continue
        last_rank = max(arrivals, key=lambda q: arrivals[q][1])
        last = arrivals[last_rank][1]
        for rank, (name, start, end) in arrivals.items():
            until = min(last, end)
            if until > start and rank != last_rank:
                events.append(complete_event(f"wait for rank {last_rank}", "wait", rank, 0,
                                             start - origin, until - origin,
                                             {"step": step, "in": name}))
    return events


def complete_event(name: str, cat: str, pid: int, tid: int, start: float, end: float,
                   args: dict) -> dict:
    """A span as a complete event ("X"), in microseconds. The start and the end are rounded,
    not the length, so a span inside another stays inside it after rounding."""
    ts, until = round(start * 1e6, 3), round(max(end, start) * 1e6, 3)
    return {"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": ts,
            "dur": round(until - ts, 3), "args": args}
