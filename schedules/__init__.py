"""Schedules per ISA family. A target file names its family; `relax_pipeline` builds TVM's default
Relax pipeline for the target with that family's schedule passes inserted after legalization
(where the TIR kernels exist and before they are lowered).

Families: x86-avx2, x86-avx512, x86-vnni, arm-neon, arm-dotprod, arm-i8mm, cuda, and wgsl (the
vulkan target: WGSL kernels, compiled by qcompile/wgsl.py rather than by this Relax pipeline).
"""

from __future__ import annotations

FAMILIES = ("x86-avx2", "x86-avx512", "x86-vnni", "arm-neon", "arm-dotprod", "arm-i8mm", "cuda", "wgsl")


def _dlight_gpu_rules(*first) -> list:
    from tvm.s_tir.dlight import ApplyDefaultSchedule, gpu

    return [ApplyDefaultSchedule(*first, gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback())]


def schedule_passes(family: str, target) -> list:
    """The family's default-schedule passes: its packed int8 kernels first, then a rule for every
    other kernel (schedules/cpu_default.py on CPUs, TVM's dlight GPU rules on CUDA and WGSL, where
    dlight's matmul rule tiles the packed dot-product kernels of schedules/wgsl_int8.py)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown schedule family '{family}'; known: {', '.join(FAMILIES)}")
    from tvm.s_tir.dlight import ApplyDefaultSchedule

    if family == "wgsl":
        return _dlight_gpu_rules()
    if family == "cuda":
        from .cuda_int8 import Int8PackedGPU, Int8TensorCoreMatmul
        from .intrinsics import KERNELS

        return _dlight_gpu_rules(Int8PackedGPU(KERNELS[family]), Int8TensorCoreMatmul())

    from .cpu_default import CPUDefault
    from .int8_schedule import Int8Packed
    from .intrinsics import KERNELS

    if family not in KERNELS:
        return [ApplyDefaultSchedule(CPUDefault())]
    return [ApplyDefaultSchedule(Int8Packed(KERNELS[family]), CPUDefault())]


def relax_passes(family: str) -> list:
    """Passes on the Relax graph before legalization: int8 layers into the family's packed kernels
    (for WGSL: the integer graph in 32-bit types, int8 layers on packed words)."""
    from .intrinsics import KERNELS

    if family == "wgsl":
        from .wgsl_int8 import wgsl_int_pass

        return [wgsl_int_pass()]
    if family not in KERNELS:
        return []
    from .int8_packed import is_eligible, pack_int8_pass

    if family == "cuda":  # the GPU kernels stay NCHW
        return [pack_int8_pass(KERNELS[family])]
    from .channels_last import channels_last_pass

    return [channels_last_pass(is_eligible), pack_int8_pass(KERNELS[family])]


def fused_module_passes(family: str, target) -> list:
    """Everything up to the fused TIR kernels: the module tuning extracts its tasks from, and the
    one tuning records are applied to (the same passes, so the records' workloads match)."""
    import importlib

    from tvm import relax

    stock = importlib.import_module(f"tvm.relax.backend.{_backend(target)}.pipeline")
    # The stock legalization without the default schedules CUDA's adds: ours follow in schedule_passes.
    fusion = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
              relax.transform.FuseOps(), relax.transform.FuseTIR()]
    dispatch = [] if family == "wgsl" else stock.library_dispatch_passes(target)
    return dispatch + relax_passes(family) + fusion


def _backend(target) -> str:
    # The backend's own pipeline module: tvm.relax.pipeline's dispatchers reach for
    # cpu_generic.dataflow_lower_passes, which 0.27's cpu_generic package does not export.
    return "cuda" if target.kind.name == "cuda" else "cpu_generic"


def relax_pipeline(family: str, target, tuned: bool = False):
    """The whole pipeline; `tuned`: apply the tuning database in scope before the default schedules."""
    import importlib

    import tvm
    from tvm import relax

    stock = importlib.import_module(f"tvm.relax.backend.{_backend(target)}.pipeline")

    @tvm.transform.module_pass(opt_level=0, name=f"qcompile.pipeline.{family}")
    def _pipeline(mod, _ctx):
        with target:
            apply_records = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)] if tuned else []
            seq = tvm.transform.Sequential(
                fused_module_passes(family, target)
                + apply_records
                + schedule_passes(family, target)
                + stock.dataflow_lower_passes(target)
                + stock.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline
