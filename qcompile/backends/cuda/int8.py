"""CUDA schedule of the packed int8 kernels (packed/pack.py): one thread per output
pixel and group of 4 output channels, the reduction over (kh, kw, input channels / 4) in
registers, four input channels per `dp4a`. The input packing and the epilogue run as flat elementwise loops."""

from __future__ import annotations

from tvm import s_tir, tirx

from ..packed.intrinsics import register
from ..packed.schedule import PackedKernelRule
from ..rules import TargetRule

THREADS = 128


def _bind_flat(sch, block) -> None:
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, [None, tirx.IntImm("int64", THREADS)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


class Int8PackedGPU(PackedKernelRule):
    target_kind = "cuda"

    def schedule_packed(self, sch, dot, kernel):
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
            sch.tensorize(lane, register(kernel.intrin))
        for block in blocks[:index] + [blocks[-1]]:
            _bind_flat(sch, block)
        return sch


class Int8TensorCoreMatmul(TargetRule):
    """int8 x int8 -> int32 matmuls with every dimension over 64 on int8 tensor cores (WMMA), by
    dlight's rule without its software-pipelining annotations: with them 0.27's CUDA codegen fails
    ("fragment_info" check) on s8 fragments."""

    MIN_DIM = 64  # dlight's own threshold for tensorizing
    target_kind = "cuda"

    def schedule(self, func, target, tunable):
        if not _is_large_int8_matmul(func):
            return None
        from tvm.s_tir.dlight.gpu.matmul import MatmulInt8Tensorization

        sch = MatmulInt8Tensorization().apply(func, target, tunable)
        if sch is None:
            return None
        stack = [sch.get_sblock("root")]
        while stack:
            block = stack.pop()
            stack += list(sch.get_child_blocks(block))
            for loop in sch.get_loops(block):
                for key in [k for k in sch.get(loop).annotations.keys() if k.startswith("software_pipeline")]:
                    sch.unannotate(loop, key)
        return sch


def _is_large_int8_matmul(func) -> bool:
    """A reduction block reading two int8 buffers into int32, every loop over MIN_DIM."""
    sch = s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        stmt = sch.get(block)
        kinds = {int(iv.iter_type) for iv in stmt.iter_vars}
        if 2 not in kinds:  # no reduction axis
            continue
        reads = [r.source.dtype for r in stmt.reads]
        extents = [iv.dom.extent for iv in stmt.iter_vars]
        return (str(stmt.writes[0].source.dtype) == "int32" and [str(d) for d in reads].count("int8") >= 2
                and all(isinstance(e, tirx.IntImm) and int(e) > Int8TensorCoreMatmul.MIN_DIM for e in extents[-3:]))
    return False
