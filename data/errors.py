"""The one exception type of the data package.

Everything a user can get wrong about the data -- a missing folder, a corrupt download, a
truncated HDF5 file, a checksum that does not match -- is raised as a `DataError` whose message
is a single line naming the file and what is wrong with it, for example

    train-labels-idx1-ubyte.gz: label 10 at index 7 is outside 0-9

Callers that face users (`python -m data.prepare`, the training command) catch it and print
`error: <message>` instead of a traceback. Anything else that escapes is a bug, and its
traceback is welcome.

Nothing to run here; `python -m data.prepare --help` shows the command that uses it.
"""


class DataError(Exception):
    """A problem with the data that the user can fix; the message is one line."""
