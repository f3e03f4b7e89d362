"""Default CPU schedule (no tuning): every fused kernel gets its epilogue inlined, its outer
spatial loops run in parallel, the loop of the operand a row does not read (a convolution's
output channels, a matmul's rows) register-tiled, and its innermost spatial loop moved inside the
reduction loops and vectorized, accumulating in a local buffer. Kernels it cannot schedule keep
TVM's TIR.

This is the floor every build gets; per-ISA int8 intrinsics and MetaSchedule tuning go further."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func

from ..rules import TargetRule, loop_extent, loop_work, parallel_if_worth_it, reverse_compute_at_covering

INNER_MAX = 64  # elements of the innermost loop kept together (LLVM vectorizes and unrolls them)
def _vars_in(expr) -> set:
    return set(tirx.analysis.undefined_vars(expr))


def _reuse_axis(sch, block, n_spatial: int) -> int | None:
    """The spatial axis to register-tile: one that indexes an operand the innermost axis does not
    (a convolution's output channels, a matmul's rows), so each value loaded from that operand
    is reused across the whole innermost row."""
    stmt = sch.get(block)
    iters = [iv.var for iv in stmt.iter_vars]
    inner = iters[n_spatial - 1]
    candidates = []
    for region in stmt.reads:
        used = set().union(*[_vars_in(r.min) for r in region.region]) if region.region else set()
        if inner in used:
            continue
        candidates += [i for i in range(n_spatial - 1) if iters[i] in used]
    return max(candidates) if candidates else None


def _inner_factor(extent: int) -> int:
    if extent <= INNER_MAX:
        return extent
    for factor in (64, 48, 32, 16, 8):
        if extent % factor == 0:
            return factor
    return extent


class CPUDefault(TargetRule):
    def schedule(self, func, target, _tunable):
        try:
            return self._schedule(func)
        except Exception:  # noqa: BLE001 - a kernel this rule cannot handle keeps TVM's default TIR
            return None

    def _schedule(self, func):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        reductions = [b for b in infos if not b.is_injective()]
        if len(reductions) > 1:
            return None
        main = reductions[0] if reductions else infos[-1]
        # The epilogue chain into its last block. Producers (padding) stay separate loops: inlined,
        # their bounds checks would sit in the innermost loop and stop vectorization.
        main_index = infos.index(main)
        for info in infos[main_index + 1:]:
            if info is not infos[-1]:
                try:
                    sch.compute_inline(info.block_rv)
                except Exception:  # noqa: BLE001
                    pass
        tail = infos[-1].block_rv if infos[-1] is not main else None
        if tail is not None:
            try:
                sch.reverse_compute_inline(tail)
                tail = None
            except Exception:  # noqa: BLE001
                pass
        block = main.block_rv
        kinds = main.dom_kind()
        loops = sch.get_loops(block)
        if len(loops) != len(kinds) or not kinds.startswith("S"):
            return None
        n_spatial = len(kinds) - len(kinds.lstrip("S"))
        if "S" in kinds[n_spatial:]:
            return None
        work = loop_work(sch, block)
        spatial, reduce = list(loops[:n_spatial]), list(loops[n_spatial:])
        inner_extent = loop_extent(sch, spatial[-1])
        if inner_extent is None:
            return None
        factor = _inner_factor(inner_extent)
        reuse = _reuse_axis(sch, block, n_spatial) if reduce else None
        reuse_tile = None
        if reuse is not None:
            extent = loop_extent(sch, spatial[reuse])
            tile = next((t for t in (8, 4, 2) if extent and extent % t == 0 and extent >= 2 * t), None)
            if tile is not None:
                spatial[reuse], reuse_tile = sch.split(spatial[reuse], [None, tile])
        outer, inner = sch.split(spatial[-1], [None, factor])
        inner_loops = [reuse_tile, inner] if reuse_tile is not None else [inner]
        sch.reorder(*spatial[:-1], outer, *reduce, *inner_loops)
        fused = sch.fuse(*spatial[:-1], outer)
        parallel_if_worth_it(sch, fused, work)
        if reuse_tile is not None:
            sch.unroll(reuse_tile)
        if reduce and factor <= INNER_MAX:
            sch.vectorize(inner)
        if reduce:
            # Accumulate a row in a local buffer (registers) and write it back once.
            acc = sch.cache_write(block, 0, "local")
            sch.reverse_compute_at(acc, fused)
            sch.decompose_reduction(block, reduce[0])
        if tail is not None and not reverse_compute_at_covering(sch, tail, fused):
            tail_loops = sch.get_loops(tail)
            if tail_loops:
                parallel_if_worth_it(sch, tail_loops[0], loop_work(sch, tail))
        for info in infos[:main_index]:  # producers: parallel over their outer loop
            producer_loops = sch.get_loops(info.block_rv)
            if producer_loops:
                parallel_if_worth_it(sch, producer_loops[0], loop_work(sch, info.block_rv))
        return sch
