"""qcompile: a quantizing model compiler on Apache TVM.

Python API, one call per CLI command:
    qcompile.build(model, target, output, ...)   -> BuildResult
    qcompile.debug(model, calib, quantize=...)   -> DebugResult (per-layer quantization error)
    qcompile.run(artifact, inputs, output, ...)  -> RunResult
    qcompile.load(artifact)                      -> Session (loaded once; session(inputs) -> outputs)
    qcompile.inspect(artifact)                   -> dict
    qcompile.list_targets()                      -> [TargetSpec]
TVM itself is imported only when a call needs it. Importing qcompile sets TVM_NUM_THREADS to the
physical core count unless it is set (qcompile/threads.py says why).
"""

from .threads import use_physical_cores

use_physical_cores()

from .api import build  # noqa: E402
from .artifact import read_metadata as inspect  # noqa: E402
from .debug import debug  # noqa: E402
from .errors import QCompileError  # noqa: E402
from .execute import run  # noqa: E402
from .session import load  # noqa: E402
from .targets import get_target, list_targets  # noqa: E402

__all__ = ["QCompileError", "build", "debug", "get_target", "inspect", "list_targets", "load", "run"]
