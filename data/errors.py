"""The user errors: `UserError`, the base every command catches, and the data package's own.

Everything a user can get wrong -- a missing folder, a corrupt download, a truncated HDF5 file,
a bad config key, an unreadable checkpoint -- is raised as a `UserError` whose message is a
single line naming the file, key or value and what is wrong with it, for example

    train-labels-idx1-ubyte.gz: label 10 at index 7 is outside 0-9

The commands catch `UserError`, print `error: <message>` instead of a traceback and exit with
status 2, overwriting nothing. Anything else that escapes is a bug, and its traceback is welcome.

The data package raises `DataError`; the training side raises `dist.errors.ExpectedError`. Both
are `UserError`s, so a command that reads data and trains catches one type. (The base lives
here, at the bottom of the imports: the data package imports nothing from `dist`.)

Nothing to run here; `python -m data.prepare --help` shows a command that uses it.
"""


class UserError(Exception):
    """A problem the user can fix: the message is one line; the command exits with status 2."""


class DataError(UserError):
    """A problem with the data (a file, a download, a checksum) that the user can fix."""
