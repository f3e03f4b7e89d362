"""The CUDA backend: int8 layers into packed dp4a kernels (NCHW), large int8 matmuls on tensor
cores, every other kernel under TVM's dlight GPU rules; exported like a CPU library with the CUDA
kernels embedded. Its artifacts run on a machine with an NVIDIA GPU only."""

from __future__ import annotations

from pathlib import Path

from ...errors import QCompileError
from ..base import Backend


class CUDABackend(Backend):
    kind = "cuda"
    stock = "cuda"

    def tvm_target(self):
        import tvm

        return tvm.target.Target({"kind": "cuda", **self.spec.cuda}, host={"kind": "llvm", **self.spec.llvm})

    def relax_passes(self) -> list:
        from ..packed.pack import pack_int8_pass

        return [pack_int8_pass(self.family.int8)] if self.family.int8 is not None else []

    def schedule_passes(self, target) -> list:
        from ..rules import dlight_gpu_rules
        from .int8 import Int8PackedGPU, Int8TensorCoreMatmul

        first = [Int8PackedGPU(self.family.int8), Int8TensorCoreMatmul()] if self.family.int8 is not None else []
        return dlight_gpu_rules(*first)

    def export(self, compiled, output, metadata: dict):
        from ..cpu.export import write_library

        return write_library(compiled, self.spec, Path(output), metadata)

    def write_bundle(self, artifact, bundle, metadata: dict):
        from ..cpu.export import write_bundle

        return write_bundle(self.spec, Path(artifact), Path(bundle), metadata)

    def runs_here(self) -> str | None:
        return "a CUDA artifact runs only on a machine with an NVIDIA GPU and its driver"

    def run(self, path, arrays, metadata: dict, repeat: int, bundle=None):
        raise QCompileError(f"{path}: {self.runs_here()}")
