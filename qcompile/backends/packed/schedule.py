"""Schedule of the packed int8 kernel (packed/pack.py) on CPUs, one function for both paths:
the default schedule (fixed tile) and MetaSchedule (the tile is a sampled, tunable decision).

Dot block loops: n, oh, oc_outer, ow, lane | kh, kw, c_outer, k. The output row is split into
`tile` pixels whose int32 accumulators (tile x lanes) stay in registers while the weight tile of
(kh, kw, c_outer) is reused across them; (lane, k) is one dot-product instruction."""

from __future__ import annotations

from tvm import s_tir, tirx

from ..families import Int8Kernel
from ..rules import TargetRule, loop_extent, loop_work, parallel_if_worth_it, reverse_compute_at_covering, tir_nodes
from .intrinsics import register
from .pack import RULE, default_tile, max_tile

# Fewer (image rows x row tiles) than this and the output-channel blocks are parallel as well: a
# 7x7 layer or a matmul of one row would otherwise leave cores idle (or run on one).
MIN_PARALLEL_TILES = 16


def find_dot_block(sch):
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).annotations.get("schedule_rule") == RULE:
            return block
    return None


def schedule_dot(sch, dot, kernel: Int8Kernel, tile=None):
    """Tile, register-block and tensorize the dot block. `tile=None` samples the row tile: a
    decision MetaSchedule tunes (and mutates). Returns the loops of row tiles and of channel blocks
    (one loop, the parallel one, on small images), and the channel vectors in a register tile."""
    sch.unannotate(dot, "schedule_rule")  # tensorize compares annotations with the intrinsic's
    work = loop_work(sch, dot)
    n, oh, oco, ow, lane, *reduce = sch.get_loops(dot)
    depthwise = len(reduce) == 2  # kh, kw; a convolution also has c_outer, k
    if not depthwise:
        kernel = kernel.for_tile(loop_extent(sch, lane), loop_extent(sch, reduce[3]))
    pixels = 1 if depthwise else kernel.pixels
    pixel_loops = []
    if pixels > 1:  # the instruction's own pixels innermost, the register tile over pairs of pixels
        ow, ow_pixels = sch.split(ow, [None, pixels])
        pixel_loops = [ow_pixels]
    blocks = channel_blocks(sch, dot, kernel)
    if tile is None:
        factors = sch.sample_perfect_tile(ow, n=2, max_innermost_factor=max_tile(kernel.lanes, blocks) // pixels)
    else:
        factors = [None, tile // pixels]
    ow_outer, ow_inner = sch.split(ow, factors)
    outer_reduce, inner_reduce = (reduce, []) if depthwise else (reduce[:3], reduce[3:])
    block_loops = []  # the register tile's channel vectors, inside its pixels
    if blocks > 1:
        oco, block = sch.split(oco, [None, blocks])
        block_loops = [block]
    # Without an intrinsic (float32: one input channel per step) the lane loop goes innermost and is
    # vectorized here, before the reduction is decomposed (TVM refuses it after): each step is then
    # `tile` vector FMAs on accumulators held in registers. Left to LLVM's own vectorizer, they were
    # loaded and stored around every FMA (a 512x384 @ 384x96 matmul: 25 GMAC/s, 141 so). A depthwise
    # layer's lanes likewise (a 96x96x16 3x3 layer: 44 -> 23 us on AVX-512).
    vector_lanes = depthwise or kernel.intrin is None and kernel.kpack == 1
    if vector_lanes:
        sch.reorder(n, oh, ow_outer, oco, *outer_reduce, ow_inner, *pixel_loops, *inner_reduce, lane)
        sch.vectorize(lane)
    else:
        sch.reorder(n, oh, ow_outer, oco, *outer_reduce, ow_inner, *block_loops, *pixel_loops, lane, *inner_reduce)
    outer = sch.fuse(n, oh, ow_outer)
    if (loop_extent(sch, outer) or 0) < MIN_PARALLEL_TILES:  # a small image (or a matmul's few rows):
        # the output-channel blocks run in parallel too, outermost: each core then reads its share
        # of the weights once, not once per row tile (a 32x1024 @ 1024x8210 matmul: 4.7 -> 3.0 ms)
        sch.reorder(oco, outer)
        outer = oco = sch.fuse(oco, outer)
    parallel_if_worth_it(sch, outer, work)
    # Accumulators that TIR vectorizes (an intrinsic's, or the lane loop's) in "global" scope: TVM
    # puts only small *global* buffers on the stack (where LLVM keeps them in registers); a "local"
    # one is a TVMBackendAllocWorkspace call in every parallel iteration. Where LLVM vectorizes the
    # dot itself (NEON's smlal convolution) it stays "local": on the stack it was promoted to
    # scalars and the vectors were lost.
    in_registers = kernel.intrin is not None or vector_lanes
    acc = sch.cache_write(dot, 0, "global" if in_registers else "local")
    sch.reverse_compute_at(acc, oco, preserve_unit_loops=True)  # a stable loop count for replayed traces
    sch.vectorize(sch.get_loops(acc)[-1])
    init = sch.decompose_reduction(dot, reduce[0])
    sch.vectorize(sch.get_loops(init)[-1])
    # Without an intrinsic and with several input channels per step (NEON's smlal kernel), the lane
    # loop stays a plain loop over contiguous data inside the unrolled channel pair, left to LLVM.
    if not depthwise and kernel.intrin is not None:
        sch.tensorize(pixel_loops[0] if pixel_loops else lane, register(kernel.intrin))
    elif not depthwise and not vector_lanes:
        sch.reorder(inner_reduce[0], lane)
        sch.unroll(inner_reduce[0])
    sch.unroll(ow_inner)
    for block in block_loops:
        sch.unroll(block)
    return outer, oco, blocks


def channel_blocks(sch, dot, kernel: Int8Kernel) -> int:
    """Output-channel vectors in a dot block's register tile: the kernel's channel_blocks where its
    instruction covers one pixel and the layer's channel vectors divide into them, else 1."""
    loops = sch.get_loops(dot)
    blocks = kernel.channel_blocks
    if len(loops) == 7 or kernel.intrin is None or kernel.pixels != 1 or (loop_extent(sch, loops[2]) or 1) % blocks:
        return 1  # a depthwise block (7 loops), an instruction of two pixels, or an odd count of vectors
    return blocks


def _parallel_outer(sch, block) -> None:
    work = loop_work(sch, block)
    loops = sch.get_loops(block)
    if len(loops) >= 2:
        parallel_if_worth_it(sch, sch.fuse(loops[0], loops[1]), work)
    elif loops:
        parallel_if_worth_it(sch, loops[0], work)


def schedule_kernel(sch, dot, kernel: Int8Kernel, tile: int | None):
    """The whole fused kernel: input packing in parallel, the dot block, and the epilogue (unpack,
    bias, requantize) inlined into one block computed per tile while the accumulators are hot."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    dot_index = names.index(sch.get(dot).name_hint)
    for block in blocks[dot_index + 1:-1]:
        sch.compute_inline(block)
    for block in blocks[:dot_index]:
        _parallel_outer(sch, block)
    last = blocks[-1]
    # the epilogue's innermost loop runs over the output channels (channels-last), blocks of `lanes`
    channels = loop_extent(sch, sch.get_loops(last)[-1]) if last != dot else None
    blocks_of_lanes = loop_extent(sch, sch.get_loops(dot)[2])
    ragged = bool(channels) and channels > kernel.lanes and channels % kernel.lanes != 0 and \
        -(-channels // kernel.lanes) == blocks_of_lanes
    outer, oco, blocks = schedule_dot(sch, dot, kernel, tile)
    if ragged and outer is not oco and _ragged_epilogue(sch, last, outer, kernel.lanes):
        return sch
    # An epilogue whose region the tile cannot bound, or that covers more than it, runs after it.
    if last != dot and not reverse_compute_at_covering(sch, last, oco, preserve_unit_loops=True):
        _parallel_outer(sch, last)
    elif last != dot and loop_extent(sch, sch.get_loops(last)[-1]) == kernel.lanes * blocks:
        # The epilogue over a tile's channels (bias, residual add, requantize) in whole vectors: LLVM
        # left it scalar, and after a short reduction (a 1x1 convolution of 32 channels) it cost as
        # much as the dot. palm-detection fp32 6.9 -> 4.8 ms; int8 models unchanged within noise.
        channels = sch.get_loops(last)[-1]
        if blocks > 1:  # a tile of several channel vectors: one vector at a time
            channels = sch.split(channels, [None, kernel.lanes])[1]
        sch.vectorize(channels)
    return sch


def _ragged_epilogue(sch, last, outer, lanes: int) -> bool:
    """An epilogue over channels that are not a whole number of vectors (BlazeFace's 28), computed
    per row tile after all its channel blocks, in whole vectors and then short ones. Computed per
    channel block, the last block's predicate (channel < 28) made TVM's vectorizer scalarize every
    block's epilogue, and a 1x1 convolution's requantize cost several times its dot products."""
    if not reverse_compute_at_covering(sch, last, outer, preserve_unit_loops=True):
        return False
    channel = sch.get_loops(last)[-1]
    extent = loop_extent(sch, channel) or 0
    cuts = sorted({0, extent, extent - extent % lanes} | _condition_cuts(sch.get(last), extent, lanes))
    lengths = [b - a for a, b in zip(cuts, cuts[1:])]  # whole vectors, or less than one
    pieces = sch.loop_partition(channel, lengths[:-1] + [None]) if len(lengths) > 1 else [channel]
    for piece, length in zip(pieces, lengths):
        sch.vectorize(sch.split(piece, [None, lanes])[1] if length > lanes else piece)
    return True


def _condition_cuts(block, extent: int, lanes: int) -> set[int]:
    """Where a condition on the channel (a channel pad fused into the epilogue: `c < 24 ? x[c] : 0`)
    changes inside a vector: the vector around it is cut there, and at the vector boundaries either
    side, so that every piece's condition is constant. TVM cannot vectorize a conditional load whose
    condition varies across the lanes and runs the whole piece scalar (BlazeFace's 24 -> 28 channel
    pad of a residual add: a 1x1 convolution 86 -> 38 us)."""
    channel = block.iter_vars[-1].var
    cuts = set()
    for node in tir_nodes(block.body):
        if isinstance(node, (tirx.LT, tirx.LE, tirx.GT, tirx.GE)):
            # the first channel where `channel OP constant` (or `constant OP channel`) flips
            if node.a.same_as(channel) and isinstance(node.b, tirx.IntImm):
                bound = int(node.b.value) + isinstance(node, (tirx.LE, tirx.GT))
            elif node.b.same_as(channel) and isinstance(node.a, tirx.IntImm):
                bound = int(node.a.value) + isinstance(node, (tirx.GE, tirx.LT))
            else:
                continue
            if 0 < bound < extent and bound % lanes:
                cuts.update({bound, bound - bound % lanes, min(extent, bound - bound % lanes + lanes)})
    return cuts


def kernel_of(sch, dot, int8: Int8Kernel | None, floating: Int8Kernel | None) -> Int8Kernel | None:
    """The family's kernel a packed dot block was made for: the float one for a float accumulator."""
    return floating if str(sch.get(dot).writes[0].source.dtype).startswith("float") else int8


class PackedKernelRule(TargetRule):
    """A rule for the kernels a family's pack passes produced (any other kernel is left to the next
    rule): `kernel` for the int8 ones, `float_kernel` (pack.float_kernel) for the float32 ones."""

    def __init__(self, kernel: Int8Kernel | None, float_kernel: Int8Kernel | None = None):
        self.kernel = kernel
        self.float_kernel = float_kernel

    def schedule(self, func, target, _tunable):
        sch = s_tir.Schedule(func)
        dot = find_dot_block(sch)
        if dot is None:
            return None
        kernel = kernel_of(sch, dot, self.kernel, self.float_kernel)
        return None if kernel is None else self.schedule_packed(sch, dot, kernel)

    def schedule_packed(self, sch, dot, kernel: Int8Kernel):
        raise NotImplementedError


class Int8Packed(PackedKernelRule):
    """Default CPU schedule (dlight rule) of the packed kernels."""

    def schedule_packed(self, sch, dot, kernel: Int8Kernel):
        loops = sch.get_loops(dot)
        width = loop_extent(sch, loops[3])
        if len(loops) != 7:
            kernel = kernel.for_tile(loop_extent(sch, loops[4]), loop_extent(sch, loops[-1]))
        pixels = 1 if len(loops) == 7 else kernel.pixels
        most = max_tile(kernel.lanes, channel_blocks(sch, dot, kernel))
        return schedule_kernel(sch, dot, kernel, default_tile(width, pixels, most))


def tuning_space(kernel: Int8Kernel | None, float_kernel: Int8Kernel | None = None):
    """MetaSchedule's design space for a packed kernel: this schedule with the row tile sampled.
    Its own space generator (not a custom rule inside PostOrderApply): the generic rules would
    then re-parallelize the loops it marked, which MetaSchedule's postprocessor rejects."""
    from tvm.s_tir import meta_schedule as ms

    def space(sch):
        dot = find_dot_block(sch)
        schedule_kernel(sch, dot, kernel_of(sch, dot, kernel, float_kernel), None)
        return sch

    return ms.space_generator.ScheduleFn(space, sch_rules=[], postprocs=[ms.postproc.DisallowDynamicLoop()],
                                         mutator_probs={ms.mutator.MutateTileSize(): 1.0})


def is_packed_kernel(mod) -> bool:
    sch = s_tir.Schedule(mod)
    return find_dot_block(sch) is not None
