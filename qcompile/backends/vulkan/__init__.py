"""The Vulkan backend, through WGSL: the integer graph in 32-bit words with dot4I8Packed
convolutions, TVM's dlight GPU schedules, and an artifact (.vkz) of WGSL kernels and a dispatch
plan that runs with wgpu on any Vulkan driver, without TVM. Tuned on this machine's Vulkan device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...atomic import atomic_dir
from ...errors import QCompileError, compiling
from ..base import Backend, median_ms

VULKAN_README = """# {name}: qcompile deploy bundle for {target}

{description}

Files: `model.vkz` (WGSL kernels, dispatch plan and weights), `vulkan_runtime.py` (the runner:
numpy and wgpu, no TVM). On the device: `pip install numpy wgpu` and a Vulkan driver, then

    from vulkan_runtime import VulkanModel
    outputs = VulkanModel("model.vkz").run({{{inputs}}})

Outputs: {output_names}.
"""


class VulkanBackend(Backend):
    kind = "vulkan"
    suffix = ".vkz"
    tunable = True
    verify_against_unscheduled = False  # an unscheduled GPU kernel has no threads to launch

    def tvm_target(self):
        import tvm

        return tvm.target.Target({"kind": "webgpu", **self.spec.webgpu}, host={"kind": "llvm"})

    def dispatch_passes(self, target) -> list:
        return []  # no vendor libraries behind WGSL

    def relax_passes(self) -> list:
        from ..float_requantize import float_requantize_pass
        from .int8 import wgsl_int_pass

        return [float_requantize_pass(), wgsl_int_pass()]

    def schedule_passes(self, target) -> list:
        from ..rules import dlight_gpu_rules

        return dlight_gpu_rules()

    def lower(self, mod, database=None):
        """Legalized, fused and scheduled for the GPU (TVM's Relax VM cannot launch WebGPU kernels
        outside a browser: export plans the dispatches instead, and link has nothing to do)."""
        import contextlib

        import tvm

        from .int8 import check_symmetric

        check_symmetric(mod)
        target = self.tvm_target()
        with compiling(self.spec), target, database if database is not None else contextlib.nullcontext():
            return tvm.transform.Sequential(self.scheduled_passes(target, database is not None))(mod)

    def link(self, lowered):
        return lowered

    def export(self, compiled, output, metadata: dict):
        from .wgsl import plan_module, write_artifact

        with compiling(self.spec):
            plan, shaders, consts = plan_module(compiled, self.tvm_target(), [t["name"] for t in metadata["inputs"]],
                                                [t["name"] for t in metadata["outputs"]])
        return write_artifact(Path(output), plan, shaders, consts, metadata)

    def write_bundle(self, artifact, bundle, metadata: dict):
        spec = self.spec
        with atomic_dir(bundle) as tmp:
            shutil.copy2(artifact, tmp / "model.vkz")
            shutil.copy2(Path(__file__).resolve().parent / "runtime.py", tmp / "vulkan_runtime.py")
            (tmp / "model.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
            (tmp / "README.md").write_text(VULKAN_README.format(
                name=Path(metadata["source"]).stem, target=spec.name, description=spec.description,
                inputs=", ".join(f'"{t["name"]}": x{i}' for i, t in enumerate(metadata["inputs"])),
                output_names=", ".join(f"`{t['name']}`" for t in metadata["outputs"])))
        return Path(bundle)

    def runs_here(self) -> str | None:
        try:
            import wgpu
        except ImportError:
            return "running a Vulkan artifact needs wgpu (pip install 'qcompile[vulkan]')"
        try:
            adapter = wgpu.gpu.request_adapter_sync()
        except RuntimeError as err:
            adapter, why = None, str(err)
        else:
            why = "no adapter"
        return None if adapter is not None else (f"no Vulkan device found ({why}); install a Vulkan driver "
                                                 "(Debian: mesa-vulkan-drivers)")

    def run(self, path, arrays, metadata: dict, repeat: int, bundle=None):
        from .runtime import VulkanModel

        try:
            model = VulkanModel(path)
        except ImportError:
            raise QCompileError(f"{path}: running a Vulkan artifact needs wgpu (pip install 'qcompile[vulkan]')") from None
        except RuntimeError as err:  # no adapter: no Vulkan driver (apt install mesa-vulkan-drivers)
            raise QCompileError(f"{path}: no Vulkan device found ({err}); install a Vulkan driver "
                                "(Debian: mesa-vulkan-drivers)") from None
        named = dict(zip([t["name"] for t in metadata["inputs"]], arrays))
        outputs = list(model.run(named).values())
        return outputs, median_ms(lambda: model.run(named), repeat), "vulkan (wgpu)"

    def load(self, path, metadata: dict):
        raise QCompileError(f"{path}: qcompile.load keeps only native CPU artifacts loaded; run a Vulkan artifact with "
                            "qcompile.run, or keep it loaded with qcompile.backends.vulkan.runtime.VulkanModel(path)")

    def device(self, rpc=None, target=None):
        from .tuning import VulkanDevice

        if rpc is not None:
            raise QCompileError(f"target '{self.spec.name}': --rpc-tracker measures on CPU boards; Vulkan kernels "
                                "are measured on this machine's Vulkan device")
        return VulkanDevice(self.tvm_target())

    def tuning_target(self, num_cores: int | None = None):
        from .tuning import search_target

        return search_target(self.spec.webgpu)

    def tune_space(self, task_mod):
        from .tuning import gpu_space

        return gpu_space()
