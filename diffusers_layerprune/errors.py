"""The one exception type for mistakes a user can make (bad path, bad index, wrong model family).

The CLI prints it on one line and exits 2; Python callers can catch it as a ``ValueError``.
"""


class LayerPruneError(ValueError):
    """A user-correctable error. The message says what is wrong and how to fix it."""
