"""MPI's files in /dev/shm: removed on every exit that can still run code, and cleaned by hand
after one that cannot (SIGKILL, a node crash).

MPICH keeps one named segment per node, ``/dev/shm/mpich_shm_<id>_0`` (1-4 MB), for the whole
run and unlinks it in MPI_Finalize; an MPI_Abort skips that, and so the file stays until reboot.
Our own shared window (dist/comm.py SharedVectors) is unlinked by MPICH right after every rank
has mapped it, so it cannot leak. ``unlink_mapped()`` removes the *names* of the files this
process has mapped: the memory stays valid for every rank still using it and is freed when the
last one exits. dist/comm.py calls it before every Abort and on a stop by signal.

After a SIGKILL, on each node (Slurm: ``srun --ntasks-per-node=1 python -m dist.shm``):

    python -m dist.shm            # remove MPI files in /dev/shm that no running process maps
    python -m dist.shm --dry-run  # only list them

A file is left alone if any process maps it (a job still running), if it is younger than a
minute (a job starting up), or if it belongs to another user (run it as that user, or root).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SHM = Path("/dev/shm")
# MPICH's node segment and its shared windows; UCX's segments (MPICH built with UCX); Open MPI's
# shared-memory transport (sm_segment.<host>.<uid>.<job>.<rank>).
PREFIXES = ("mpich_shm_", "mpich_shar_", "ucx_shm_posix_", "sm_segment.")
MIN_AGE_SECONDS = 60


def _mapped(maps: Path) -> set[str]:
    """Paths under /dev/shm that a process maps and that still have a name."""
    found = set()
    try:
        lines = maps.read_text().splitlines()
    except OSError:   # the process exited meanwhile, or is not ours to read
        return found
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith(f"{SHM}/") \
                and not fields[5].endswith("(deleted)"):
            found.add(fields[5])
    return found


def unlink_mapped() -> list[str]:
    """Remove the names of the MPI files in /dev/shm that this process maps. Returns them."""
    removed = []
    for path in sorted(_mapped(Path("/proc/self/maps"))):
        if Path(path).name.startswith(PREFIXES):
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:    # another rank of the job was first: fine
                pass
    return removed


def leftovers(min_age: float = MIN_AGE_SECONDS) -> list[Path]:
    """MPI files in /dev/shm of this user that no running process maps (a killed job's)."""
    in_use = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            in_use |= _mapped(proc / "maps")
    now, uid = time.time(), os.getuid()
    stale = []
    for path in sorted(SHM.glob("*")) if SHM.is_dir() else []:
        try:
            st = path.stat()
        except OSError:
            continue
        if path.name.startswith(PREFIXES) and str(path) not in in_use \
                and now - st.st_mtime >= min_age and (uid == 0 or st.st_uid == uid):
            stale.append(path)
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist.shm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list, do not remove")
    parser.add_argument("--min-age", type=float, default=MIN_AGE_SECONDS, metavar="SECONDS",
                        help="leave files younger than this alone (default %(default)s)")
    args = parser.parse_args(argv)
    stale = leftovers(args.min_age)
    for path in stale:
        print(f"{'would remove' if args.dry_run else 'removed'} {path}")
        if not args.dry_run:
            path.unlink(missing_ok=True)
    print(f"{len(stale)} leftover MPI shared-memory file(s) in {SHM}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
