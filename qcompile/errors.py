"""The one error type users see: a single line naming the culprit (file, node, op, layer)."""


class QCompileError(Exception):
    """A user-facing failure. str(err) is one line; the CLI prints it and exits 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class compiling:
    """`with compiling(spec):` turns any error from TVM's depths into one QCompileError line that
    names the target; QCompileErrors pass through unchanged."""

    def __init__(self, spec):
        self.spec = spec

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, QCompileError) or not isinstance(err, Exception):
            return False
        from .frontends.common import last_line

        raise QCompileError(f"compiling for target '{self.spec.name}' failed: {last_line(err)}") from None
