"""CUDA schedule of the packed int8 kernels (schedules/int8_packed.py): one thread per output
pixel and group of 4 output channels, the reduction over (kh, kw, input channels / 4) in
registers, four input channels per `dp4a`. The input packing and the epilogue run as flat elementwise loops."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule

from .int8_schedule import find_dot_block
from .intrinsics import Int8Kernel, register

THREADS = 128


def _bind_flat(sch, block) -> None:
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, [None, tirx.IntImm("int64", THREADS)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


class Int8PackedGPU(ScheduleRule):
    def __init__(self, kernel: Int8Kernel):
        self.kernel = kernel

    def is_target_available(self, target) -> bool:
        return target.kind.name == "cuda"

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        dot = find_dot_block(sch)
        if dot is None:
            return None
        sch.unannotate(dot, "schedule_rule")
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        index = [sch.get(b).name_hint for b in blocks].index(sch.get(dot).name_hint)
        for block in blocks[index + 1:-1]:
            sch.compute_inline(block)
        n, oh, oco, ow, lane, *reduce = sch.get_loops(dot)
        # Rows to blocks, pixels to threads, no split: tensorize fails (an int32 IterVar over
        # int64 loops) on bindings of a split fused loop.
        bx, tx = sch.fuse(n, oh), ow
        sch.reorder(tx, oco, *reduce[:3], lane, *reduce[3:])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        acc = sch.cache_write(dot, 0, "local")
        sch.reverse_compute_at(acc, oco, preserve_unit_loops=True)
        sch.decompose_reduction(dot, reduce[0])
        if len(reduce) == 4:  # a convolution: kh, kw, c_outer | 4 output lanes x 4 channels, one dp4a per lane
            sch.tensorize(lane, register(self.kernel.intrin))
        for block in blocks[:index] + [blocks[-1]]:
            _bind_flat(sch, block)
        return sch
