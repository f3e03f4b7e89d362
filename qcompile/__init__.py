"""qcompile: a quantizing model compiler on Apache TVM.

Python API, one call per CLI command:
    qcompile.build(model, target, output, ...)   -> BuildResult
    qcompile.run(artifact, inputs, output, ...)  -> RunResult
    qcompile.inspect(artifact)                   -> dict
    qcompile.list_targets()                      -> [TargetSpec]
"""

from .artifact import read_metadata as inspect
from .errors import QCompileError
from .targets import get_target, list_targets


def build(*args, **kwargs):
    from .build import build as _build

    return _build(*args, **kwargs)


def run(*args, **kwargs):
    from .run import run as _run

    return _run(*args, **kwargs)


__all__ = ["QCompileError", "build", "get_target", "inspect", "list_targets", "run"]
