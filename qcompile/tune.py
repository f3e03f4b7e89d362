"""Autotuning with MetaSchedule and its XGBoost cost model.

Tasks are the fused kernels of the same module a build compiles (schedules.fused_module_passes),
so the records apply to it as they are. Every measured trial is appended to the records folder at
once: an interrupted run (Ctrl-C, kill -9) loses at most the trial in flight, and running the same
command again tunes only the trials each kernel still lacks. When a kernel is done, its best
schedule is run against the unscheduled kernel on random inputs; builds use verified records only.

Measurements run on this machine, or on devices registered at a TVM RPC tracker (`rpc`)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import QCompileError
from .errors import last_line
from .records import (TARGET, VERIFIED, best_records, check_target, open_database, read_json, record_counts,
                      workload_key, write_json)
from .targets import get_target


@dataclass
class RPC:
    tracker: str  # HOST:PORT
    key: str
    timeout_s: int = 30

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.tracker.rpartition(":")
        if not host or not port.isdigit():
            raise QCompileError(f"--rpc-tracker '{self.tracker}': expected HOST:PORT (e.g. 127.0.0.1:9190)")
        return host, int(port)


@dataclass
class TaskResult:
    name: str
    trials: int
    best_ms: float | None
    verified: bool | None  # None: nothing to verify (no successful trial)
    max_diff: float | None = None
    default_ms: float | None = None  # the default schedule, timed beside the tuned one
    used: bool | None = None  # right and faster than the default: a build applies it


@dataclass
class TuneResult:
    records: Path
    tasks: list[TaskResult] = field(default_factory=list)
    new_trials: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def _without_stock_intrinsics():
    """TuneContext imports tvm.s_tir.tensor_intrin (every stock intrinsic: about 70 s) to register
    them; qcompile's kernels use their own (schedules/intrinsics.py). A stand-in module serves while
    tuning and is taken away after, so a later build in the same process (CUDA's tensor cores)
    imports the real one."""
    name = "tvm.s_tir.tensor_intrin"
    stub = types.ModuleType(name) if name not in sys.modules else None
    if stub is not None:
        sys.modules[name] = stub
    try:
        yield
    finally:
        if stub is not None and sys.modules.get(name) is stub:
            del sys.modules[name]


def _build(mod, target, _params):
    """Builder worker: compile one scheduled kernel (the stock one imports the stock intrinsics)."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.compile(mod, target=target)


def _export(spec_json: dict, mod) -> str:
    """Builder worker: link with the target's toolchain (a cross compiler for a remote board)."""
    from tvm.support import cc as tvm_cc

    from .targets import TargetSpec
    from .toolchain import compiler, fresh_dir, link_options

    spec = TargetSpec.from_json(spec_json)
    work = fresh_dir("tune")
    path = str(Path(tempfile.mkdtemp(prefix="qcompile-tune-")) / "kernel.so")
    mod.export_library(path, fcompile=tvm_cc.cross_compiler(compiler(spec), options=link_options(spec, work)))
    return path


def tuning_target(spec, num_cores: int | None = None):
    import tvm

    if spec.kind == "vulkan":
        from .wgsl_tune import search_target

        return search_target(spec)
    if spec.kind != "llvm":
        raise QCompileError(f"target '{spec.name}': tuning runs on CPU targets (llvm); {spec.kind} kernels use TVM's GPU schedules")
    from .threads import use_physical_cores

    cores = num_cores or use_physical_cores()  # the threads the kernels are measured with
    return tvm.target.Target({"kind": "llvm", **spec.llvm, "num-cores": cores})


def extract_tasks(mod, spec, target) -> list[tuple[str, object]]:
    """(name, IRModule) of each fused kernel not already scheduled, in program order, deduplicated."""
    import tvm
    from tvm import tirx

    from schedules import fused_module_passes

    with target:
        fused = tvm.transform.Sequential(fused_module_passes(spec.schedule_family, target))(mod)
    tasks, seen = [], set()
    for gv, func in fused.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs and func.attrs.get("tirx.is_scheduled", False):
            continue
        task_mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        key = workload_key(task_mod)
        if key not in seen:
            seen.add(key)
            tasks.append((gv.name_hint, task_mod))
    return tasks


def _free_devices(rpc: RPC) -> int:
    from tvm import rpc as tvm_rpc

    import socket

    host, port = rpc.host_port
    try:  # TVM's client retries a dead address for a minute, logging each try: ask once first
        socket.create_connection((host, port), timeout=5).close()
        summary = tvm_rpc.connect_tracker(host, port).summary()
    except Exception:  # noqa: BLE001
        raise QCompileError(f"--rpc-tracker {rpc.tracker}: no RPC tracker answers there") from None
    return summary.get("queue_info", {}).get(rpc.key, {}).get("free", 0)


def _check_tracker(rpc: RPC, resume_hint: str = "", wait_s: float = 0.0) -> None:
    """A one-line error unless a device of rpc.key is free, within wait_s: a server registers
    again only some seconds after its last session closed (tens of seconds under emulation)."""
    deadline = time.monotonic() + wait_s
    while not _free_devices(rpc):
        if time.monotonic() >= deadline:
            raise QCompileError(f"--rpc-key {rpc.key}: no free device with this key at tracker {rpc.tracker}{resume_hint}")
        time.sleep(0.5)


def _runner(rpc: RPC | None):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=5, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=60)
    host, port = rpc.host_port
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=rpc.key,
                                 session_timeout_sec=rpc.timeout_s)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def _progress_callback(bar, state: dict):
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for build, run in zip(builder_results, runner_results):
                state["trials"] += 1
                if build.error_msg is None and run.error_msg is None and run.run_secs:
                    ms_ = 1e3 * float(np.mean([float(s) for s in run.run_secs]))
                    state["best_ms"] = min(state.get("best_ms") or ms_, ms_)
                else:
                    state["failed"] += 1
            bar.update(len(runner_results))
            bar.set_postfix_str(f"{state['task']}: best {state.get('best_ms') or float('nan'):.4g} ms")

    return Progress()


def _space():
    """MetaSchedule's generic CPU rules. Not its x86 defaults: with VNNI in the target those
    auto-tensorize unpacked weights (fast and wrong); int8 kernels come packed and have their own
    space (schedules/int8_schedule.py)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.PostOrderApply(sch_rules=ms.ScheduleRule.create("llvm"),
                                             postprocs=ms.Postproc.create("llvm"),
                                             mutator_probs=ms.Mutator.create("llvm"))


def _strategy(trials: int):
    """Evolutionary search sized to the budget: MetaSchedule's defaults (a population of 512, 50
    unmeasured seeds) take minutes per kernel before the first measurement."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(32, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=min(50, population // 2),
                                                 genetic_num_iters=2 if trials < 32 else 4)


def random_arrays(shapes_dtypes, seed: int = 0) -> list[np.ndarray]:
    """Inputs for timing and verifying one kernel: small integers (shifts and products stay
    defined), normal floats."""
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in shapes_dtypes:
        shape, dtype = [int(d) for d in shape], str(dtype)
        if dtype.startswith(("int", "uint")):
            arrays.append(rng.integers(0, 4, shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def param_types(func) -> list[tuple[list[int], str]]:
    """(shape, dtype) of each parameter of a PrimFunc."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return [([int(d) for d in info.shape], str(info.dtype)) for info in ArgInfo.from_prim_func(func)]


def _default_schedule(task_mod, family: str, target):
    import tvm

    from schedules import schedule_passes

    fresh = tvm.ir.load_json(tvm.ir.save_json(task_mod))  # the default-schedule pass edits its input
    with target:
        return tvm.transform.Sequential(schedule_passes(family, target))(fresh)


def _verify(task_mod, record, target, device, family: str) -> tuple[float, float, float]:
    """(max |difference| between the tuned kernel and the unscheduled one on random inputs,
    tuned us, default-schedule us): a record is used only where it is right and beats the default."""
    from tvm import s_tir

    sch = s_tir.Schedule(task_mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    default = _default_schedule(task_mod, family, target)
    args = random_arrays(param_types(task_mod["main"]))
    outputs, times = [], []
    for mod in (task_mod, sch.mod, default):
        lib = _build(mod, target, None)
        tensors = [device.tensor(a) for a in args]
        times.append(device.run(lib, tensors, timed=mod is not task_mod))
        outputs.append([t.numpy() for t in tensors])
    diffs = [np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / max(1.0, np.abs(a).max())
             for a, b in zip(*outputs[:2]) if a.size]
    return float(max(diffs, default=0.0)), times[1], times[2]


def _vm_us(vm, device, tensors) -> float:
    timer = vm.time_evaluator("main", device, number=1, repeat=5, min_repeat_ms=20)
    return float(np.median(timer(*tensors).results)) * 1e6


def _time_us(module, device, tensors) -> float:
    return float(module.time_evaluator("main", device, number=20, repeat=5, min_repeat_ms=10)(*tensors).median * 1e6)


class _LocalDevice:
    def __init__(self):
        import tvm

        self.dev = tvm.cpu()

    def tensor(self, a):
        import tvm

        return tvm.runtime.tensor(a, self.dev)

    def run(self, lib, tensors, timed=False):
        lib["main"](*tensors)
        return _time_us(lib.mod, self.dev, tensors) if timed else None

    def vm_us(self, executable, arrays) -> float:
        """Microseconds of a Relax VM executable's main here (median of 5 repeats of >= 20 ms)."""
        from tvm import relax

        return _vm_us(relax.VirtualMachine(executable, self.dev), self.dev, [self.tensor(a) for a in arrays])


class _RemoteDevice:
    def __init__(self, rpc: RPC, spec):
        from tvm import rpc as tvm_rpc

        host, port = rpc.host_port
        self.session = tvm_rpc.connect_tracker(host, port).request(rpc.key, session_timeout=rpc.timeout_s * 4)
        self.dev = self.session.cpu()
        self.spec_json = spec.to_json()
        self.uploads = 0

    def tensor(self, a):
        import tvm

        return tvm.runtime.tensor(a, self.dev)

    def run(self, lib, tensors, timed=False):
        self.uploads += 1  # a fresh name each time: re-opening an overwritten library would crash the server
        name = f"kernel_{self.uploads}.so"
        self.session.upload(_export(self.spec_json, lib), target=name)
        remote = self.session.load_module(name)
        remote["main"](*tensors)
        return _time_us(remote, self.dev, tensors) if timed else None

    def vm_us(self, executable, arrays) -> float:
        """Microseconds of a Relax VM executable's main on the device (cross-linked here, uploaded)."""
        from tvm import relax

        self.uploads += 1
        name = f"model_{self.uploads}.so"
        self.session.upload(_export(self.spec_json, executable), target=name)
        vm = relax.VirtualMachine(self.session.load_module(name), self.dev)
        return _vm_us(vm, self.dev, [self.tensor(a) for a in arrays])


def measuring_device(spec, rpc: RPC | None):
    """This machine, or a device of `rpc`'s key at its tracker (a one-line error if none is free)."""
    if rpc is None:
        return _LocalDevice()
    _check_tracker(rpc)
    try:
        return _RemoteDevice(rpc, spec)
    except Exception as err:  # noqa: BLE001 - the tracker's errors become one line
        raise QCompileError(f"--rpc-key {rpc.key}: no device could be reached at {rpc.tracker} ({last_line(err)})") from None


def tune(model, target: str = "host", records="tuning-records", trials: int = 64, *, input_shapes=None,
         quantize=None, calib=None, rpc: RPC | None = None, progress: bool = True, seed: int = 0,
         trials_per_iter: int = 16) -> TuneResult:
    """Tune every kernel of `model` (as `build` would compile it) up to `trials` measured trials each,
    appending to the records folder `records`; returns what each kernel reached."""
    with _without_stock_intrinsics():
        return _tune(model, target, records, trials, input_shapes=input_shapes, quantize=quantize, calib=calib,
                     rpc=rpc, progress=progress, seed=seed, trials_per_iter=trials_per_iter)


def _tune(model, target, records, trials, *, input_shapes, quantize, calib, rpc, progress, seed,
          trials_per_iter) -> TuneResult:
    from tqdm.auto import tqdm

    from .pipeline import prepare
    from tvm.s_tir import meta_schedule as ms

    from schedules.int8_schedule import is_packed_kernel, tuning_space
    from schedules.intrinsics import register_all

    if trials < 1:
        raise QCompileError(f"--trials {trials}: must be at least 1")
    vulkan = get_target(target).kind == "vulkan"
    if vulkan and rpc is not None:
        raise QCompileError(f"target '{target}': --rpc-tracker measures on CPU boards; Vulkan kernels are measured "
                            "on this machine's Vulkan device")
    start = time.perf_counter()
    prepared = prepare(model, target, input_shapes, quantize, calib)
    spec = prepared.spec
    if rpc is None and not spec.is_native:
        raise QCompileError(f"target '{spec.name}' ({spec.arch}) cannot be measured on this machine; "
                            "tune on the device through --rpc-tracker HOST:PORT --rpc-key KEY")
    if rpc is not None:
        _check_tracker(rpc)
    ms_target = tuning_target(spec, None if rpc is None else spec.runtime.get("num_cores", 4))
    records = Path(records)
    database = open_database(records, create=True)
    check_target(records, spec)
    write_json(records, TARGET, {"name": spec.name, "spec": spec.to_json()})
    register_all()
    tasks = extract_tasks(prepared.mod, spec, ms_target)
    counts = record_counts(database)
    todo = [(name, mod, max(0, trials - counts.get(workload_key(mod), 0))) for name, mod in tasks]
    if vulkan:
        from .wgsl_tune import WGSLBuilder, WGSLRunner, gpu_space

        builder, runner = WGSLBuilder(spec.tvm_target()), WGSLRunner()
    else:
        builder = ms.builder.LocalBuilder(f_build=_build, f_export=functools.partial(_export, spec.to_json()),
                                          max_workers=1, timeout_sec=120)
        runner = _runner(rpc)
    state = {"trials": 0, "failed": 0, "task": ""}
    result = TuneResult(records)
    bar = tqdm(total=sum(n for _, _, n in todo), unit="trial", desc=f"tuning {Path(str(model)).name} for {spec.name}",
               disable=not progress)
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [_progress_callback(bar, state)]
    try:
        for index, (name, mod, remaining) in enumerate(todo):
            if remaining == 0:
                continue
            if rpc is not None and index:
                _check_tracker(rpc, f"; {state['trials']} trials are kept in {records}: run the same command again to resume",
                               wait_s=rpc.timeout_s)
            state.update(task=name, best_ms=None)
            space = gpu_space() if vulkan else tuning_space(spec.schedule_family) if is_packed_kernel(mod) else _space()
            context = ms.TuneContext(mod=mod, target=ms_target, space_generator=space,
                                     search_strategy=_strategy(trials), task_name=name, num_threads=1,
                                     rand_state=seed + index)
            before_failed, before_trials = state["failed"], state["trials"]
            ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=str(records / "logs"),
                          max_trials_global=remaining, max_trials_per_task=remaining,
                          num_trials_per_iter=min(trials_per_iter, remaining), builder=builder, runner=runner,
                          database=database, cost_model="xgb", measure_callbacks=callbacks,
                          task_scheduler="round-robin")
            ran = state["trials"] - before_trials
            if rpc is not None and ran and state["failed"] - before_failed == ran:
                raise QCompileError(f"every trial of kernel '{name}' failed on device '{rpc.key}' (it dropped out?); "
                                    f"the records so far are kept in {records}: run the same command again to resume")
    except KeyboardInterrupt:
        bar.close()
        raise QCompileError(f"tuning interrupted; {state['trials']} new trials are kept in {records}: "
                            "run the same command again to resume") from None
    bar.close()
    result.new_trials = state["trials"]
    result.tasks = _verify_all(tasks, database, records, ms_target, rpc, spec)
    result.seconds = time.perf_counter() - start
    return result


def _verify_all(tasks, database, records, target, rpc, spec) -> list[TaskResult]:
    verdicts = read_json(records, VERIFIED)
    best = best_records(database)
    counts = record_counts(database)
    device = None
    results = []
    for name, mod in tasks:
        key = workload_key(mod)
        record = best.get(key)
        if record is None:
            results.append(TaskResult(name, counts.get(key, 0), None, None))
            continue
        best_ms = 1e3 * float(np.mean([float(s) for s in record.run_secs]))
        trace_key = str(record.trace)
        verdict = verdicts.get(key)
        if verdict is None or verdict.get("trace") != trace_key or "default_us" not in verdict:
            if spec.kind == "vulkan":
                from .wgsl_tune import KernelDevice, verify

                device = device or KernelDevice()
                diff, tuned_us, default_us = verify(mod, record, spec.tvm_target(), device)
            else:
                device = device or (_LocalDevice() if rpc is None else _RemoteDevice(rpc, spec))
                diff, tuned_us, default_us = _verify(mod, record, target, device, spec.schedule_family)
            verdict = {"task": name, "ok": diff <= 1e-3, "max_diff": diff, "trace": trace_key,
                       "tuned_us": tuned_us, "default_us": default_us, "faster": bool(tuned_us < default_us)}
            verdicts[key] = verdict
            write_json(records, VERIFIED, verdicts)
        results.append(TaskResult(name, counts.get(key, 0), best_ms, verdict["ok"], verdict["max_diff"],
                                  verdict["default_us"] / 1e3, verdict["faster"]))
    return results
