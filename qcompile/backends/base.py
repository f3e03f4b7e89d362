"""The interface every backend offers (one backend per target kind), and the one measuring
interface, Device, that tuning, kernel verification and the mixed-precision latency table share."""

from __future__ import annotations

import contextlib
import importlib
import statistics
import time

import numpy as np

from ..errors import QCompileError, compiling
from ..quantize import PRECISIONS
from .families import family


def _rounding_vectorizes() -> None:
    """Let TVM's loop vectorizer vectorize round-half-to-even (every requantize rounds with it).
    0.27 registers tirx.round, floor and the rest as vectorizable but not nearbyint: a loop that
    rounds was scalarized whole and left to LLVM's loop vectorizer, which vectorized some and not
    others (BlazeFace's 1x1 convolution of 24 channels: 67 -> 38 us). LLVM's llvm.nearbyint rounds
    each lane as the scalar one does."""
    import tvm

    if tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None:
        tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


class Backend:
    """One target kind: its Relax passes, its schedule rules, compile, export, run, measure.
    TVM's relax/backend/<stock>/pipeline.py gives the stock legalization and lowering around them."""

    kind = ""  # cpu | cuda | vulkan: the key backend_for looks the class up by
    stock = "cpu_generic"
    suffix = ".so"  # of its artifacts
    tunable = False  # MetaSchedule can tune its kernels
    times_models = False  # its Device times whole compiled models (the latency objective)
    # Kernel verification compares a tuned kernel with the unscheduled one (it runs as it is), or,
    # where an unscheduled kernel cannot run (no threads to launch on a GPU), with the default schedule.
    verify_against_unscheduled = True

    def __init__(self, spec):
        _rounding_vectorizes()
        self.spec = spec
        self.family = family(spec.schedule_family)
        if self.family.kind != self.kind:
            raise QCompileError(f"target '{spec.name}': schedule family '{self.family.name}' is for "
                                f"{self.family.kind} targets, not {self.kind}")

    @property
    def precisions(self) -> tuple[str, ...]:
        """The per-layer precisions its kernels realize: int4 only where 4-bit weights are stored as such."""
        return tuple(p for p in PRECISIONS if p != "int4" or self.family.int4_storage)

    def tvm_target(self):
        import tvm

        return tvm.target.Target({"kind": "llvm", **self.spec.llvm})

    def _stock(self):
        # The backend's own pipeline module: tvm.relax.pipeline's dispatchers reach for
        # cpu_generic.dataflow_lower_passes, which 0.27's cpu_generic package does not export.
        return importlib.import_module(f"tvm.relax.backend.{self.stock}.pipeline")

    def dispatch_passes(self, target) -> list:
        return self._stock().library_dispatch_passes(target)

    def relax_passes(self) -> list:
        """Passes on the Relax graph before legalization (int8 layers into the family's kernels)."""
        return []

    def schedule_passes(self, target) -> list:
        """The default schedules, after legalization, where the TIR kernels exist."""
        raise NotImplementedError

    def fused_module_passes(self, target) -> list:
        """Everything up to the fused TIR kernels: the module tuning extracts its tasks from, and the
        one tuning records are applied to (the same passes, so the records' workloads match)."""
        from tvm import relax

        from ..passes.fold_constants import FoldRemainingConstants

        # The stock legalization without the default schedules CUDA's adds: ours follow in schedule_passes.
        # FastMathTransform first: exp, erf and tanh as TVM's vectorizable polynomial approximations
        # (libm's are scalar calls): the char LM's fp32 latency fell to 0.7x, its logits no further
        # from onnxruntime's (largest difference 2.6e-5 before, 2.6e-5 after).
        fusion = [relax.transform.FastMathTransform(), relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                  declared_op_patterns(), FoldRemainingConstants, relax.transform.FuseOps(), relax.transform.FuseTIR()]
        return self.dispatch_passes(target) + self.relax_passes() + fusion

    def scheduled_passes(self, target, tuned: bool = False) -> list:
        """Fused and scheduled; `tuned`: the kernels of the tuning database in scope by their records first."""
        from tvm import relax

        apply_records = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)] if tuned else []
        return self.fused_module_passes(target) + apply_records + self.schedule_passes(target)

    def fused_kernels(self, mod, target) -> list[tuple[str, object]]:
        """(name, one-kernel IRModule) of each fused kernel of `mod` not already scheduled, in program
        order: what tuning tunes and what its records are matched against."""
        import tvm
        from tvm import tirx

        with target:
            fused = tvm.transform.Sequential(self.fused_module_passes(target))(mod)
        return [(gv.name_hint, tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
                for gv, func in fused.functions_items()
                if isinstance(func, tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.is_scheduled", False))]

    def default_schedule(self, task_mod, target):
        """One extracted kernel under the default schedules (the reference a tuned kernel must beat)."""
        import tvm

        fresh = tvm.ir.load_json(tvm.ir.save_json(task_mod))  # the default-schedule pass edits its input
        with target:
            return tvm.transform.Sequential(self.schedule_passes(target))(fresh)

    def compile(self, mod, database=None):
        """The compiled module: a Relax executable (a scheduled module for Vulkan); with `database`
        (records.trusted_database), its verified kernels replace the default schedules."""
        return self.link(self.lower(mod, database))

    def lower(self, mod, database=None):
        """`mod` through the Relax pipeline (fused, scheduled, lowered to the VM's calls): the part of
        compile that runs Python passes. `database` as for compile."""
        import tvm

        target = self.tvm_target()
        stock = self._stock()
        with compiling(self.spec), target, database if database is not None else contextlib.nullcontext():
            return tvm.transform.Sequential(self.scheduled_passes(target, database is not None)
                                            + stock.dataflow_lower_passes(target) + stock.finalize_passes(target))(mod)

    def link(self, lowered):
        """A lowered module's executable: the TIR pipeline and LLVM, TVM's C++ throughout (it can
        run on a thread of its own while Python works on the next module)."""
        import tvm

        with compiling(self.spec):
            return tvm.compile(lowered, target=self.tvm_target(), relax_pipeline=None)

    def generate(self, lowered):
        """link, and whatever of export can be done before the artifact's metadata is known (so on
        a thread of its own while the build goes on)."""
        return self.link(lowered)

    def export(self, compiled, output, metadata: dict):
        """The artifact file at `output`, written atomically."""
        raise NotImplementedError

    def write_bundle(self, artifact, bundle, metadata: dict):
        """A folder that runs the artifact on the device with nothing else installed."""
        raise NotImplementedError

    def run(self, path, arrays: list[np.ndarray], metadata: dict, repeat: int, bundle=None):
        """(outputs, median latency in ms or None, how it ran)."""
        raise NotImplementedError

    def runs_here(self) -> str | None:
        """None where its artifacts run on this machine (natively, emulated, or on a device here), else why not."""
        return f"{self.kind} artifacts do not run on this machine"

    def load(self, path, metadata: dict):
        """The artifact loaded once into this process, for qcompile.load: an object with
        `bind(arrays)` (a call running the model on `arrays`, in parameter order, already on the
        device), `outputs(result)` (that call's result as a list of arrays) and `run(arrays)` (one
        whole call: arrays in, arrays out), like cpu/run.py's NativeModel. Where it cannot be, one QCompileError line says why and what to use."""
        why = self.runs_here()
        raise QCompileError(f"{path}: {why}" if why else
                            f"{path}: qcompile.load keeps only native CPU artifacts loaded in this process; "
                            f"run this '{self.spec.name}' artifact with qcompile.run")

    def run_compiled(self, compiled, batches: list[list[np.ndarray]], metadata: dict):
        """(outputs of each batch, None) of a compiled module, or (None, why it cannot run here): the
        artifact is exported once to a temporary folder and run as a user would run it (an
        executable run in memory first prints TVM warnings when exported after)."""
        import tempfile
        from pathlib import Path

        why = self.runs_here()
        if why is not None:
            return None, why
        from ..timing import stage

        with tempfile.TemporaryDirectory(prefix="qcompile-verify-") as folder:
            with stage("export"):
                path = self.export(compiled, Path(folder) / f"model{self.suffix}", metadata)
            return [self.run(path, arrays, metadata, 0)[0] for arrays in batches], None

    def device(self, rpc=None, target=None) -> "Device":
        """Where kernels and models are measured: this machine, or a device at an RPC tracker."""
        raise QCompileError(f"target '{self.spec.name}': {self.kind} kernels cannot be measured by qcompile")

    def tuning_target(self, num_cores: int | None = None):
        """The target MetaSchedule searches under (where `tunable`)."""
        raise NotImplementedError

    def tune_space(self, task_mod):
        """MetaSchedule's design space for one kernel."""
        raise NotImplementedError


class Device:
    """Measures on one device: single kernels (tuning, verification), whole models (latency)."""

    def kernel(self, mod, arrays: list[np.ndarray], timed: bool = False) -> tuple[list[np.ndarray], float | None]:
        """Run a scheduled one-kernel module once on `arrays` (its parameters, outputs included):
        (every parameter after the run, microseconds per run when `timed`)."""
        raise NotImplementedError

    def model_us(self, executable, arrays: list[np.ndarray]) -> float:
        """Microseconds of a compiled model's main on `arrays` (where the backend times_models)."""
        raise NotImplementedError

    def builder(self):
        """MetaSchedule's builder for this device's candidates."""
        raise NotImplementedError

    def runner(self):
        """MetaSchedule's runner on this device."""
        raise NotImplementedError

    def close(self) -> None:
        pass


DECLARED_PATTERN = "qcompile.op_pattern"  # a kernel's own fusion pattern, for what TVM's analysis misjudges


def declared_op_patterns():
    """After AnnotateTIROpPattern: kernels declaring DECLARED_PATTERN get it as their op_pattern. The
    stock pass re-analyses a pattern of 0 (elementwise), so a kernel cannot declare it beforehand."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="qcompile.DeclaredOpPatterns")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tirx.PrimFunc) and func.attrs is not None and DECLARED_PATTERN in func.attrs:
                mod[gv] = func.with_attr("op_pattern", int(func.attrs[DECLARED_PATTERN]))
        return mod

    return _pass


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


def time_us(module, device, tensors, function: str = "main", number: int = 20, repeat: int = 5,
            min_repeat_ms: int = 10) -> float:
    """Median microseconds of module[function] by TVM's time evaluator (on the device itself)."""
    timer = module.time_evaluator(function, device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(np.median(timer(*tensors).results)) * 1e6


def latencies_ms(call, repeat: int) -> list[float]:
    """The wall time of each of `repeat` calls, in ms."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def median_ms(call, repeat: int) -> float | None:
    """The median wall time of `repeat` calls, in ms (None for no repeats)."""
    times = latencies_ms(call, repeat)
    return statistics.median(times) if times else None
