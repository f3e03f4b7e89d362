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


def _vectorize_pow2(sch, loop, extent: int) -> bool:
    """Vectorize `loop` in power-of-two pieces: LLVM turns a vector of 24 floats into scalar code
    (an attention matmul with 24-channel heads ran at 5.6 GMAC/s), three unrolled vectors of 8 into
    FMAs again (about 95 GMAC/s, as a 16- or 32-wide row). A row with no such piece of 4 or more
    is not marked at all (False)."""
    piece = extent & -extent  # the largest power of two dividing it
    if piece == extent:
        sch.vectorize(loop)
        return True
    if piece < 4:  # left to LLVM's own vectorizer (a 50-wide row: 198 us as a TVM vector, 33 us so)
        return False
    outer, inner = sch.split(loop, [None, piece])
    sch.unroll(outer)
    sch.vectorize(inner)
    return True


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
        if len(reductions) > 1:  # softmax, layer norm: a row's reductions and the maps between them
            return _schedule_row_blocks(sch, infos)
        main = reductions[0] if reductions else infos[-1]
        # The epilogue chain into its last block. Producers (padding) stay separate loops: inlined,
        # their bounds checks would sit in the innermost loop and stop vectorization.
        main_index = infos.index(main)
        if not reductions:  # elementwise only: every block but the last inlined into it
            for inlined in ("all", "one reader", "none"):
                if inlined != "all":
                    sch = s_tir.Schedule(func)
                    infos = normalize_prim_func(sch)
                    main = infos[-1]
                _inline(sch, infos[:-1], inlined)
                if _expression_size(sch, main.block_rv) <= MAX_INLINED_EXPRESSION:
                    break
            infos = [info for info in infos if _still_there(sch, info.block_rv)]
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
        if not reduce and tail is None:  # elementwise: one flat loop, parallel chunks of whole vectors
            _schedule_flat(sch, spatial, work)
            _parallel_producers(sch, infos[:main_index])
            return sch
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
        vectorized = bool(reduce) and factor <= INNER_MAX and _vectorize_pow2(sch, inner, factor)
        if reduce:
            # Accumulate a row in registers and write it back once: a "global" buffer where TIR
            # vectorizes the row (TVM puts small global buffers on the stack, a "local" one is a
            # workspace allocation per parallel iteration: a 2x2 max pool of 48x48x16, 35 -> 10 us);
            # "local" where LLVM vectorizes it (on the stack its vectors were lost to scalars).
            acc = sch.cache_write(block, 0, "global" if vectorized else "local")
            sch.reverse_compute_at(acc, fused)
            sch.decompose_reduction(block, reduce[0])
        if tail is not None and not reverse_compute_at_covering(sch, tail, fused):
            tail_loops = sch.get_loops(tail)
            if tail_loops:
                parallel_if_worth_it(sch, tail_loops[0], loop_work(sch, tail))
        _parallel_producers(sch, infos[:main_index])
        return sch


def _schedule_row_blocks(sch, infos):
    """A kernel with several reductions over rows (softmax, layer norm): every block computed inside
    the last block's row loop, rows in parallel, so a row's max, exponentials, sum and quotients stay
    in cache and one parallel region runs. TVM's own TIR for them runs on one core."""
    last = infos[-1]
    if not last.is_injective():
        return None
    loops = sch.get_loops(last.block_rv)
    if len(loops) < 2:
        return None
    work = sum(loop_work(sch, info.block_rv) for info in infos)  # every pass over the rows
    # An elementwise block one block reads (a layer norm's scale, round, clamp) goes into its reader:
    # each was a pass of its own over a whole-tensor buffer, and the rows ran on one core (a layer
    # norm of 8x50x64 with its requantize: 45 us). One read by several (softmax's exponentials) stays.
    _inline(sch, infos[:-1], "one reader")  # the reductions cannot be inlined and stay
    kept = [info for info in infos[:-1] if _still_there(sch, info.block_rv)]
    rows = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    for info in reversed(kept):
        sch.compute_at(info.block_rv, rows, preserve_unit_loops=True)
    parallel_if_worth_it(sch, rows, work)
    row = loop_extent(sch, sch.get_loops(last.block_rv)[-1])
    if row:
        _vectorize_pow2(sch, sch.get_loops(last.block_rv)[-1], row)
    return sch


# An elementwise kernel whose blocks, all inlined, make a larger expression than this (characters
# of TVMScript) keeps the blocks that several others read, and if still too large, every block:
# inlining copies a block into each reader, and a fused chain that reads its values again and again
# (an LSTM cell's gates, each through fake-quantize ops) grew to 680 kB, which LLVM did not compile
# in 20 minutes (39 s with the shared blocks kept).
MAX_INLINED_EXPRESSION = 50_000


def _inline(sch, infos, which: str) -> None:
    """Inline `which` of the blocks: all, those read by no more than one block, or none."""
    for info in infos:
        if which == "none" or which == "one reader" and len(sch.get_consumers(info.block_rv)) > 1:
            continue
        try:
            sch.compute_inline(info.block_rv)
        except Exception:  # noqa: BLE001
            pass


def _expression_size(sch, block) -> int:
    return len(str(sch.get(block)))


def _still_there(sch, block) -> bool:
    try:
        sch.get(block)
        return True
    except Exception:  # noqa: BLE001 - inlined
        return False


def _parallel_producers(sch, infos) -> None:
    for info in infos:  # producers: parallel over their outer loop
        producer_loops = sch.get_loops(info.block_rv)
        if producer_loops:
            parallel_if_worth_it(sch, producer_loops[0], loop_work(sch, info.block_rv))


def _schedule_flat(sch, spatial, work) -> None:
    """An elementwise kernel: its trailing axes fused until a row holds 64 elements, that row split
    in whole vectors (64, or the largest power of two dividing it) and vectorized, the rest fused
    and parallel. The innermost axis alone may be 1 (a [512, 384, 1, 1] GELU over a matmul's
    output), which left scalar code; the row keeps contiguous accesses (a flat index would not:
    its div/mod per lane made an embedding gather 35x slower)."""
    i, row = len(spatial) - 1, loop_extent(sch, spatial[-1])
    while i > 0 and row is not None and row < INNER_MAX:
        i -= 1
        extent = loop_extent(sch, spatial[i])
        row = None if extent is None else row * extent
    piece = next((f for f in (64, 32, 16, 8) if row and row % f == 0), None)
    if piece is None:
        parallel_if_worth_it(sch, sch.fuse(*spatial) if len(spatial) > 1 else spatial[0], work)
        return
    inner = sch.fuse(*spatial[i:]) if len(spatial) - i > 1 else spatial[i]
    outer, vector = sch.split(inner, [None, piece])
    outer = sch.fuse(*spatial[:i], outer) if i > 0 else outer
    parallel_if_worth_it(sch, outer, work)
    sch.vectorize(vector)
