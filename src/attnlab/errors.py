"""The one base class of the mistakes attnlab explains in one line.

A library function raises a subclass of :class:`AttnlabError` (or of a built-in error as well,
e.g. ``CheckpointError(AttnlabError, RuntimeError)``) when the cause is the user's input or
environment: a damaged checkpoint, a missing data package, a picture that cannot be read. The
command line (:func:`attnlab.cli.main`) prints such an error as one line with exit status 2,
the explorer answers it with a 400; anything else is a bug, shown as one line with exit status 1
(``--debug`` shows where). This module imports nothing, so that ``attnlab --help`` stays fast.
"""


class AttnlabError(Exception):
    """A problem with the user's input or environment, explained by its one-line message."""
