"""The CPU backend (LLVM): int8 layers into the family's packed kernels, channels-last, the
default CPU schedule, shared libraries native or cross-linked, run natively or under qemu-user,
tuned with MetaSchedule here or on boards at an RPC tracker."""

from __future__ import annotations

from pathlib import Path

from ...errors import QCompileError
from ...targets import detect_host
from ..base import Backend


class CPUBackend(Backend):
    kind = "cpu"
    tunable = True
    times_models = True

    def _float_kernel(self):
        from ..packed.pack import float_kernel

        return float_kernel(self.family.float_lanes) if self.family.float_lanes else None

    def relax_passes(self) -> list:
        from ..float_requantize import float_requantize_pass
        from ..packed.pack import is_eligible, is_float_eligible, pack_float_pass, pack_int8_pass
        from .branch_free import branch_free_prelu_pass
        from .channels_last import channels_last_pass
        from .conv1d_as_conv2d import conv1d_as_conv2d_pass
        from .fused_lookup import fused_lookup_pass
        from .scalar_operands import scalar_operands_pass

        kernel, floating = self.family.int8, self._float_kernel()
        packed = ([pack_int8_pass(kernel)] if kernel is not None else []) + \
                 ([pack_float_pass(floating)] if floating is not None else [])
        first = [branch_free_prelu_pass()]  # every CPU family: the select it removes is LLVM's, not a kernel's
        # after channels-last, which moves transposes past takes; scalar operands last, once no pass
        # reads a constant's value any more
        last = [fused_lookup_pass(), scalar_operands_pass()]
        if not packed:
            return first + last

        def is_packed(call) -> bool:
            return (kernel is not None and is_eligible(call)) or (floating is not None and is_float_eligible(call))
        requantize = [float_requantize_pass()] if kernel is not None else []
        return first + [conv1d_as_conv2d_pass()] + requantize + \
            ([channels_last_pass(is_packed)] if self.family.channels_last else []) + packed + last

    def schedule_passes(self, target) -> list:
        from tvm.s_tir.dlight import ApplyDefaultSchedule

        from ..packed.schedule import Int8Packed
        from .default_schedule import CPUDefault

        floating = self._float_kernel()
        first = [Int8Packed(self.family.int8, floating)] if self.family.int8 is not None or floating else []
        return [ApplyDefaultSchedule(*first, CPUDefault())]

    def generate(self, lowered):
        """Linked, and its object code written: LLVM's code generation, most of export's time."""
        from .export import object_files

        compiled = self.link(lowered)
        object_files(compiled)
        return compiled

    def export(self, compiled, output, metadata: dict):
        from .export import write_library

        return write_library(compiled, self.spec, Path(output), metadata)

    def write_bundle(self, artifact, bundle, metadata: dict):
        from .export import write_bundle

        return write_bundle(self.spec, Path(artifact), Path(bundle), metadata)

    def runs_here(self) -> str | None:
        spec = self.spec
        if spec.toolchain.get("libc") == "bionic":
            return f"'{spec.name}' artifacts run on Android devices only (copy the bundle there)"
        host = detect_host()
        if spec.arch == host["arch"]:
            have = set(host["llvm"].get("mattr", []))
            lacking = [f for f in spec.llvm.get("mattr", []) if f.startswith("+") and f not in have]
            return (f"built for '{spec.name}', which needs CPU features this machine lacks: {', '.join(lacking)}"
                    if lacking else None)
        if spec.runtime.get("emulator"):
            return None
        return f"a {spec.arch} artifact cannot run on this {host['arch']} machine and its target has no emulator"

    def _native(self) -> bool:
        return self.spec.arch == detect_host()["arch"]

    def run(self, path, arrays, metadata: dict, repeat: int, bundle=None):
        from .run import run_emulated, run_native

        why = self.runs_here()
        if why is not None:
            raise QCompileError(f"{path}: {why}")
        if self._native():
            return (*run_native(Path(path), arrays, repeat), "native")
        return (*run_emulated(Path(path), arrays, self.spec, repeat, bundle), f"emulated ({self.spec.runtime['emulator'][0]})")

    def load(self, path, metadata: dict):
        """Natively: the library loaded into this process. An artifact for another architecture
        runs only under its emulator, one process per run: refused, with what to use instead."""
        from .run import NativeModel

        why = self.runs_here()
        if why is not None:
            raise QCompileError(f"{path}: {why}")
        if not self._native():
            raise QCompileError(f"{path}: built for '{self.spec.name}' ({self.spec.arch}), which runs here only under "
                                f"{self.spec.runtime['emulator'][0]}, one process per run, so qcompile.load cannot "
                                "keep it loaded; use qcompile.run")
        return NativeModel(Path(path))

    def device(self, rpc=None, target=None):
        from .devices import LocalDevice, RemoteDevice
        from .rpc import wait_for_device

        if rpc is None:
            if not self.spec.is_native:
                raise QCompileError(f"target '{self.spec.name}' ({self.spec.arch}) cannot be measured on this machine; "
                                    "measure on the device through --rpc-tracker HOST:PORT --rpc-key KEY")
            return LocalDevice(self.spec, target)
        wait_for_device(rpc)
        return RemoteDevice(self.spec, rpc, target)

    def tuning_target(self, num_cores: int | None = None):
        import tvm

        from ...threads import use_physical_cores

        cores = num_cores or use_physical_cores()  # the threads the kernels are measured with
        return tvm.target.Target({"kind": "llvm", **self.spec.llvm, "num-cores": cores})

    def tune_space(self, task_mod):
        """A packed int8 kernel: its own schedule with the row tile sampled. Any other kernel:
        MetaSchedule's generic CPU rules, not its x86 defaults: with VNNI in the target those
        auto-tensorize unpacked weights (fast and wrong)."""
        from tvm.s_tir import meta_schedule as ms

        from ..packed.schedule import is_packed_kernel, tuning_space

        if (self.family.int8 is not None or self.family.float_lanes) and is_packed_kernel(task_mod):
            return tuning_space(self.family.int8, self._float_kernel())
        return ms.space_generator.PostOrderApply(sch_rules=ms.ScheduleRule.create("llvm"),
                                                 postprocs=ms.Postproc.create("llvm"),
                                                 mutator_probs=ms.Mutator.create("llvm"))
