"""The one exception type that reaches the user as a one-line message."""


class PipelineError(Exception):
    """A problem the user can act on: bad input, wrong settings, a full disk.

    The CLI prints its message on one line and exits non-zero; anything else
    escaping is a bug and keeps its traceback.
    """
