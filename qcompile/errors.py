"""The one error type users see: a single line naming the culprit (file, node, op, layer)."""


class QCompileError(Exception):
    """A user-facing failure. str(err) is one line; the CLI prints it and exits 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Interrupted(QCompileError):
    """Ctrl-C or SIGTERM during long work: the CLI prints `qcompile: interrupted; <what was kept>`
    and exits 130, as a shell does for a process ended by SIGINT."""


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
        raise QCompileError(f"compiling for target '{self.spec.name}' failed: {last_line(err)}") from None


def last_line(err: BaseException) -> str:
    """The informative line of an exception raised deep in TVM (no C++ backtrace)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    msg = next((ln for ln in reversed(lines) if not ln.startswith(("File ", "at ", "0:", "1:"))), type(err).__name__)
    return f"{type(err).__name__}: {msg}"[:400]
