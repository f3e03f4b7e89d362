"""The tuning loop: MetaSchedule with its XGBoost cost model over each kernel in turn, every
measured trial appended to the records folder at once, then each kernel's best verified."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends import backend_for
from ..backends.cpu.rpc import RPC, wait_for_device
from ..builder import prepare
from ..errors import Interrupted, QCompileError
from ..records import TARGET, check_target, note_model, open_database, record_counts, workload_key, write_json
from ..targets import get_target
from .tasks import extract_tasks, without_stock_intrinsics
from .verify import TaskResult, verify_all


@dataclass
class TuneResult:
    records: Path
    tasks: list[TaskResult] = field(default_factory=list)
    new_trials: int = 0
    seconds: float = 0.0


DEVICE_GONE = "no free device with this key"  # what rpc.wait_for_device's error says


def _progress_callback(bar, state: dict):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

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
            if any(DEVICE_GONE in (run.error_msg or "") for run in runner_results):
                # the records so far are in the database already (the default callbacks ran first);
                # raising here is the one way to stop MetaSchedule building trials nothing can run
                state["device_gone"] = True
                raise RuntimeError("no device left")

    return Progress()


def _strategy(trials: int):
    """Evolutionary search sized to the budget: MetaSchedule's defaults (a population of 512, 50
    unmeasured seeds) take minutes per kernel before the first measurement."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(32, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=min(50, population // 2),
                                                 genetic_num_iters=2 if trials < 32 else 4)


@contextlib.contextmanager
def noting_interrupts():
    """SIGINT and SIGTERM raise KeyboardInterrupt and are noted in the dict yielded: an interrupt that
    reaches Python inside one of TVM's callbacks (the cost model's, the progress bar's) comes back out
    of TVM as a RuntimeError, which the note tells apart from a real failure."""
    noted: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def interrupt(signum, frame):
        noted["interrupted"] = True
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield noted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tune(model, target: str = "host", records="tuning-records", trials: int = 64, *, input_shapes=None, input_values=None,
         quantize=None, calib=None, rpc: RPC | None = None, progress: bool = True, seed: int = 0,
         trials_per_iter: int = 16) -> TuneResult:
    """Tune every kernel of `model` (as `build` would compile it) up to `trials` measured trials each,
    appending to the records folder `records`; returns what each kernel reached."""
    with without_stock_intrinsics(), noting_interrupts() as interrupts:
        return _tune(interrupts, model, target, records, trials, input_shapes=input_shapes, input_values=input_values,
                     quantize=quantize, calib=calib,
                     rpc=rpc, progress=progress, seed=seed, trials_per_iter=trials_per_iter)


def _tune(interrupts: dict, model, target, records, trials, *, input_shapes, input_values, quantize, calib, rpc, progress, seed,
          trials_per_iter) -> TuneResult:
    from tqdm.auto import tqdm
    from tvm.s_tir import meta_schedule as ms

    from ..backends.packed.intrinsics import register_all

    if trials < 1:
        raise QCompileError(f"--trials {trials}: must be at least 1")
    start = time.perf_counter()
    spec = get_target(target)
    backend = backend_for(spec)
    if not backend.tunable:
        raise QCompileError(f"target '{spec.name}': tuning runs on CPU and Vulkan targets; {backend.kind} kernels "
                            "use TVM's GPU schedules")
    ms_target = backend.tuning_target(None if rpc is None else spec.runtime.get("num_cores", 4))
    device = backend.device(rpc, ms_target)  # fails fast: no such device, or no free one at the tracker
    prepared = prepare(model, target, input_shapes, quantize, calib, input_values)
    records = Path(records)
    check_target(records, spec)  # before the repair: records of another target are left as they are
    database, moved = open_database(records)
    if moved:
        print(f"qcompile: {moved}", file=sys.stderr)
    write_json(records, TARGET, {"name": spec.name, "spec": spec.to_json()})
    register_all()
    tasks = extract_tasks(prepared.mod, backend, ms_target)
    note_model(records, prepared.imported.source, [workload_key(mod) for _, mod in tasks])
    counts = record_counts(database)
    todo = [(name, mod, max(0, trials - counts.get(workload_key(mod), 0))) for name, mod in tasks]
    builder, runner = device.builder(), device.runner()
    state = interrupts
    state.update(trials=0, failed=0, task="")
    result = TuneResult(records)
    bar = tqdm(total=sum(n for _, _, n in todo), unit="trial", desc=f"tuning {Path(str(model)).name} for {spec.name}",
               disable=not progress)
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [_progress_callback(bar, state)]
    try:
        for index, (name, mod, remaining) in enumerate(todo):
            if remaining == 0:
                continue
            if rpc is not None and index:
                wait_for_device(rpc, f"; {state['trials']} trials are kept in {records}: run the same command again "
                                "to resume", wait_s=rpc.timeout_s)
            state.update(task=name, best_ms=None)
            context = ms.TuneContext(mod=mod, target=ms_target, space_generator=backend.tune_space(mod),
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
        bar.close()
        result.new_trials = state["trials"]
        result.tasks = verify_all(tasks, database, records, backend, device, device.target)
    except BaseException as err:
        bar.close()
        kept = f"{state['trials']} new trials are kept in {records}: run the same command again to resume"
        if isinstance(err, KeyboardInterrupt) or state.get("interrupted"):
            raise Interrupted(kept) from None
        if state.get("device_gone"):
            raise QCompileError(f"--rpc-key {rpc.key}: no device with this key is left at {rpc.tracker} "
                                f"(waited {rpc.timeout_s} s); {kept}") from None
        raise
    finally:
        device.close()
    result.seconds = time.perf_counter() - start
    return result
