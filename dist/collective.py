"""A user error on any rank ends every rank of the job with one line.

In an MPI job a rank that stops alone leaves the others blocked in their next collective. So
the steps that can fail on a user's mistake (reading the config, the data, a checkpoint) run
through one of these, and every rank learns of a failure at the same point:

* ``agree(comm, ok, message)``: every rank contributes a flag; if any rank failed, *all* ranks
  raise the same ``ExpectedError`` together (the message of the lowest failing rank), so a bad
  config or unreadable shard is reported once, by rank 0;
* ``collectively(comm, fn, ...)`` runs ``fn`` on every rank that way; ``on_root(comm, fn, ...)``
  on rank 0 alone, sharing its result -- the other ranks wait in ``agree`` without spinning a
  core (``Comm.any_true`` sleeps between polls), which leaves rank 0 the cores;
* ``run_main(main, argv)``: how a command runs: a user error (``data.errors.UserError``)
  agreed by every rank is printed once by rank 0 and every rank exits 2; one that a single rank
  raised is printed by that rank and ends the job (MPI Abort, exit 2); any other exception
  ends it with its traceback (``dist.comm.install_abort_hook``).

    cfg = collectively(comm, load_config, args.preset)   # a bad key: one line, every rank exits
    path = on_root(comm, prepare_data, cfg)              # rank 0 prepares; the others wait

Used by dist.train, dist.ensemble and launch.lab.bench; nothing to run here.
"""
from __future__ import annotations

import sys

from data.errors import UserError
from dist.comm import Comm, install_abort_hook
from dist.errors import ExpectedError
from dist.shm import unlink_mapped


def agree(comm: Comm, ok: bool, message: str = "") -> None:
    """Collective check: if any rank has ``ok == False``, every rank raises ExpectedError
    carrying the message of the lowest failing rank (so it is printed once, by rank 0)."""
    if not comm.any_true(not ok):
        return
    messages = comm.allgather(None if ok else message)
    raise ExpectedError(next(m for m in messages if m is not None), everywhere=True)


def collectively(comm: Comm, fn, *args, **kwargs):
    """Run ``fn`` on every rank; if it fails with a user error on any rank, every rank
    raises it (the message of the lowest failing rank, printed once by rank 0)."""
    try:
        result, error = fn(*args, **kwargs), None
    except UserError as err:
        result, error = None, str(err)
    agree(comm, error is None, error or "")
    return result


def on_root(comm: Comm, fn, *args, **kwargs):
    """Run ``fn`` on rank 0 only and share its result and its errors with every rank."""
    if comm.is_root:
        result = collectively(comm, fn, *args, **kwargs)
    else:
        agree(comm, True)
        result = None
    return comm.bcast(result)


def run_main(main, argv=None) -> int:
    """Run ``main(comm, argv)`` with MPI-aware error handling; returns the exit code.

    A UserError every rank raised -> rank 0 prints ``error: ...`` once; every rank exits 2.
    A UserError of one rank -> that rank prints it and ends the job (MPI Abort, status 2).
    Anything else -> the abort hook (traceback from the failing rank, whole job ends).
    Otherwise main's own exit code (dist/stop.py: 128 + signal after a graceful stop)."""
    comm = Comm()
    install_abort_hook(comm)
    try:
        code = main(comm, argv)
    except UserError as err:
        everywhere = isinstance(err, ExpectedError) and err.everywhere
        if comm.size > 1 and not everywhere:
            print(f"error: {err} (rank {comm.rank})", file=sys.stderr, flush=True)
            unlink_mapped()
            comm.abort(2)
        if comm.is_root:
            print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        if comm.size > 1:
            unlink_mapped()
            comm.abort(130)
        return 130
    return code or 0
