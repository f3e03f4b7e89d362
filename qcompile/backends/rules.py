"""What every schedule rule shares: the target check (once, here), TVM's dlight GPU rules, and
the loop measures the CPU schedules decide parallelism with."""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir.dlight.base import ScheduleRule

# Below this many loop iterations a kernel runs on one thread: waking the pool costs more (measured:
# a 96-element requantize took 46 us in parallel).
PARALLEL_MIN_WORK = 1 << 15


class TargetRule(ScheduleRule):
    """A dlight rule for the kernels of one TVM target kind; subclasses write `schedule`."""

    target_kind = "llvm"

    def is_target_available(self, target) -> bool:
        return target.kind.name == self.target_kind

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        return self.schedule(func, target, tunable)

    def schedule(self, func, target, tunable):
        raise NotImplementedError


def dlight_gpu_rules(*first) -> list:
    """TVM's default GPU schedules, after the rules in `first`."""
    from tvm.s_tir.dlight import ApplyDefaultSchedule, gpu

    return [ApplyDefaultSchedule(*first, gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback())]


def loop_extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def loop_work(sch, block) -> int:
    """Iterations of the block's loop nest (1 for loops of unknown extent)."""
    work = 1
    for loop in sch.get_loops(block):
        work *= loop_extent(sch, loop) or 1
    return work


def parallel_if_worth_it(sch, loop, work: int) -> None:
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(loop)


def reverse_compute_at_covering(sch, block, loop, **kwargs) -> bool:
    """`sch.reverse_compute_at(block, loop)` only where the moved block still computes every
    element it did: TVM bounds the moved block by the region the loop's producer writes, so an
    epilogue that covers more than that (a channel padding after a max-pool, fused into one kernel)
    silently lost its extra elements. The move is tried first on a fresh schedule of the same
    function (`sch.copy()` fails after a tensorize: TVM's copier meets the replaced block's stale dependences).
    Returns whether the block was moved."""
    from tvm import s_tir

    before = loop_work(sch, block)
    trial = s_tir.Schedule(sch.mod)  # shares the IR objects: the block and loop are found by identity
    try:
        blocks = trial.get_child_blocks(trial.get_sblock("root"))
        trial_block = next(b for b in blocks if trial.get(b).same_as(sch.get(block)))
        trial_loop = next(lp for b in blocks for lp in trial.get_loops(b) if trial.get(lp).same_as(sch.get(loop)))
        trial.reverse_compute_at(trial_block, trial_loop, **kwargs)
    except Exception:  # noqa: BLE001 - TVM refuses the move (or the loop is not found): the block stays
        return False
    if loop_work(trial, trial_block) < before:
        return False
    try:
        sch.reverse_compute_at(block, loop, **kwargs)
    except Exception:  # noqa: BLE001
        return False
    return True


def tir_nodes(node):
    """Every node under a TIR statement (0.27's Python API has no TIR visitor)."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)) or type(node).__name__ == "Array":
            stack.extend(node)
            continue
        if not isinstance(node, (tirx.Expr, tirx.Stmt)):
            continue
        yield node
        info = type(node).__tvm_ffi_type_info__
        while info is not None:
            stack.extend(getattr(node, f.name) for f in info.fields if f.name not in ("span", "ty", "buffer"))
            info = info.parent_type_info
