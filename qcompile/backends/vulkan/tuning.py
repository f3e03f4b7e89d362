"""Measuring on the Vulkan device: MetaSchedule's builder (each candidate schedule into WGSL
kernels, vulkan/wgsl.py) and runner (timed through wgpu), and the Device that verification uses.
Kernels are never compiled to a library: a candidate is a one-kernel .vkz artifact, run by
vulkan/runtime.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

from ...atomic import fresh_dir
from ...errors import last_line
from ..base import Device, param_types, random_arrays
from .runtime import FORMAT, VulkanModel, open_device
from .wgsl import kernels_of, write_artifact


def kernel_artifact(func, target, path: Path, max_wgsl_bytes: int | None = None) -> Path:
    """A scheduled PrimFunc as a .vkz of its own: each parameter a buffer, read back after a run.
    With `max_wgsl_bytes`, larger shader sources are refused before anything is written."""
    kernels = kernels_of(func, "main", target)
    size = sum(len(k["wgsl"].encode()) for k in kernels)
    if max_wgsl_bytes is not None and size > max_wgsl_bytes:
        raise ValueError(f"{size} bytes of WGSL (over {max_wgsl_bytes}): too slow for the driver to compile")
    tensors = []
    for i, (shape, dtype) in enumerate(param_types(func)):
        tensors.append({"shape": shape, "dtype": dtype, "kind": "input", "name": f"p{i}",
                        "nbytes": int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize})
    plan = {"format": FORMAT, "tensors": tensors, "slots": [], "shaders": len(kernels),
            "dispatches": [{"shader": i, "entry": k["entry"], "kernel": "main", "bindings": k["params"], "grid": k["grid"]}
                           for i, k in enumerate(kernels)],
            "inputs": [{"name": t["name"], "tensor": i} for i, t in enumerate(tensors)],
            "outputs": [{"name": t["name"], "tensor": i} for i, t in enumerate(tensors)]}
    return write_artifact(path, plan, [k["wgsl"] for k in kernels], {}, {})


@derived_object
class WGSLBuilder(PyBuilder):
    """Each candidate: WGSL kernels, grids and parameter order, written as a one-kernel artifact
    in a folder of its own (MetaSchedule's RemoveBuildArtifact removes the folder once measured)."""

    def __init__(self, target):
        super().__init__()
        self.target = target  # webgpu: the search's own target only describes the device's limits

    def build(self, build_inputs):
        results = []
        for item in build_inputs:
            path = fresh_dir("wgsl-tune") / "kernel.vkz"
            try:
                artifact = kernel_artifact(item.mod["main"], self.target, path, MAX_WGSL_BYTES)
                results.append(BuilderResult(str(artifact), None))
            except Exception as err:  # noqa: BLE001 - a candidate that does not compile is a failed trial
                results.append(BuilderResult(None, f"WGSL build failed: {last_line(err)}"))
        return results


@derived_object
class _Done(PyRunnerFuture):
    def __init__(self, result: RunnerResult):
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return self._result


class VulkanDevice(Device):
    """The Vulkan device kernels are measured and verified on (one wgpu device for a whole run)."""

    def __init__(self, target):
        self.target = target  # webgpu
        self.device = open_device()

    def artifact(self, artifact, arrays: list[np.ndarray], timed: bool = False):
        """(every parameter's array after one run of a one-kernel artifact, microseconds per run or None)."""
        model = VulkanModel(artifact, self.device)
        outputs = model.run({f"p{i}": a for i, a in enumerate(arrays)})
        return [outputs[f"p{i}"] for i in range(len(arrays))], model.time_us() if timed else None

    def kernel(self, mod, arrays, timed=False):
        with tempfile.TemporaryDirectory(prefix="qcompile-wgsl-kernel-") as folder:
            return self.artifact(kernel_artifact(mod["main"], self.target, Path(folder) / "kernel.vkz"), arrays, timed)

    def builder(self):
        return WGSLBuilder(self.target)

    def runner(self):
        return WGSLRunner(self)


@derived_object
class WGSLRunner(PyRunner):
    """Times each built candidate on the Vulkan device (random inputs; seconds per run)."""

    def __init__(self, device: VulkanDevice):
        super().__init__()
        self.device = device

    def run(self, runner_inputs):
        futures = []
        for item in runner_inputs:
            try:
                arrays = random_arrays([(info.shape, info.dtype) for info in item.args_info])
                result = RunnerResult([self.device.artifact(item.artifact_path, arrays, timed=True)[1] / 1e6], None)
            except Exception as err:  # noqa: BLE001 - a candidate that fails on the device is a failed trial
                result = RunnerResult(None, f"Vulkan run failed: {last_line(err)}")
            futures.append(_Done(result))
        return futures


def search_target(webgpu: dict):
    """The target MetaSchedule's GPU rules search under: the Vulkan device's limits under the
    attribute names the rules read, which are CUDA's (the webgpu target kind has no
    `max_threads_per_block`). Only the search sees it: every candidate is built for the webgpu
    target (WGSLBuilder), and the warp size of 1 keeps warp-level reductions out of the space."""
    import tvm

    threads = webgpu.get("max_num_threads", 256)
    return tvm.target.Target({"kind": "cuda", "arch": "sm_50", "max_threads_per_block": threads, "max_num_threads": threads,
                              "max_shared_memory_per_block": webgpu.get("max_shared_memory_per_block", 16384),
                              "thread_warp_size": 1}, host={"kind": "llvm"})


MAX_WGSL_BYTES = 64 * 1024  # a candidate's shader source; larger ones are failed trials


def gpu_space():
    """MetaSchedule's GPU rules: shared-memory tiling, thread binding, unrolling. Unrolling stays a
    hint, not explicit: an explicitly unrolled shader of thousands of statements takes lavapipe
    (LLVM) minutes to compile into a pipeline."""
    from tvm.s_tir import meta_schedule as ms

    rules = [ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=-1, max_vectorize_extent=-1,
                                                         unroll_max_steps=[0, 16, 64, 512], unroll_explicit=False)
             if isinstance(r, ms.schedule_rule.ParallelizeVectorizeUnroll) else r for r in ms.ScheduleRule.create("cuda")]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=ms.Postproc.create("cuda"),
                                             mutator_probs=ms.Mutator.create("cuda"))
