"""The one user-error type of the training side: ``ExpectedError``.

A user error -- a bad config key, an unreadable checkpoint, a NaN loss -- is raised as an
``ExpectedError`` whose message is one line naming the key, file or value. The commands print
``error: <message>`` and exit with status 2; anything else that escapes is a bug and keeps its
traceback. This module imports no MPI, so config, checkpoint, evaluate and predict can raise
user errors without starting an MPI library. (The data package has its own twin,
``data.errors.DataError``; ``dist.comm.Comm.collectively`` treats both alike.)
"""


class ExpectedError(Exception):
    """An error the user can fix: one line, exit code 2.

    ``everywhere=True`` means every rank raises it at the same point (``Comm.agree`` does
    that, and so does a check on values all ranks share); then rank 0 alone reports it and all
    ranks exit cleanly. Raised on one rank only, it ends the whole job with MPI Abort instead,
    because the other ranks would otherwise wait forever in their next collective."""

    def __init__(self, message: str, everywhere: bool = False):
        super().__init__(message)
        self.everywhere = everywhere
