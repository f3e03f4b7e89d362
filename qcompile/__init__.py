"""qcompile: a quantizing model compiler on Apache TVM.

Python API, one call per CLI command:
    qcompile.build(model, target, output, ...)   -> BuildResult
    qcompile.run(artifact, inputs, output, ...)  -> RunResult
    qcompile.inspect(artifact)                   -> dict
    qcompile.list_targets()                      -> [TargetSpec]
TVM itself is imported only when a call needs it.
"""

from .artifact import read_metadata as inspect
from .errors import QCompileError
from .execute import run
from .pipeline import build
from .targets import get_target, list_targets

__all__ = ["QCompileError", "build", "get_target", "inspect", "list_targets", "run"]
