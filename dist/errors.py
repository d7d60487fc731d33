"""The user error of the training side: ``ExpectedError``, a ``UserError`` that knows its ranks.

A user error -- a bad config key, an unreadable checkpoint, a NaN loss -- is raised as an
``ExpectedError`` whose message is one line naming the key, file or value. The commands print
``error: <message>`` and exit with status 2; anything else that escapes is a bug and keeps its
traceback. Its base, ``data.errors.UserError``, is also that of the data package's
``DataError``: a command catches ``UserError`` and so both.

What it adds is *where* it was raised: in an MPI job a user error must end every rank, and
dist/collective.py makes the ranks agree on one. This module imports no MPI, so config,
checkpoint, evaluate and predict can raise user errors without starting an MPI library.
"""
from data.errors import UserError


class ExpectedError(UserError):
    """An error the user can fix: one line, exit code 2.

    ``everywhere=True`` means every rank raises it at the same point (``dist.collective.agree``
    does that, and so does a check on values all ranks share); then rank 0 alone reports it and
    all ranks exit cleanly. Raised on one rank only, it ends the whole job with MPI Abort
    instead, because the other ranks would otherwise wait forever in their next collective."""

    def __init__(self, message: str, everywhere: bool = False):
        super().__init__(message)
        self.everywhere = everywhere
