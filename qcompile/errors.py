"""The one error type users see: a single line naming the culprit (file, node, op, layer)."""


class QCompileError(Exception):
    """A user-facing failure. str(err) is one line; the CLI prints it and exits 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
