"""Table lookups that fuse into the kernel producing their indices, on CPUs.

realize looks an 8-bit activation's function (sigmoid, tanh, GELU... a 256-entry table) up with
take(table, codes). TVM classifies a take as injective, and FuseOps never puts an injective op into
a convolution's or matmul's epilogue, so every lookup was a kernel of its own: a pass over the
tensor, a VM call and an allocation (ddddocr's LSTM: 318 lookups a run on [1, 512] gates). A lookup
reads one table entry per output element at that element's own index: elementwise in everything
but the table. As a kernel declared elementwise (FuseOps fuses a chain into a convolution only
while every op on it is elementwise) it is computed in the producer's epilogue while the codes are
in registers."""

from __future__ import annotations

import tvm
from tvm import te, tirx

from ...ir import emit_as_is, op_name, rewrite_main, tensor_dtype
from ..base import DECLARED_PATTERN
from .channels_last import is_table_lookup

LOOKUP_NAME = "qcompile_lookup"
ELEMENTWISE = 0  # OpPatternKind kElemWise


def _is_table_lookup(value) -> bool:
    """channels_last's table lookup, on int32 codes clipped to the table (realize's form)."""
    return (op_name(value) == "take" and is_table_lookup(value) and tensor_dtype(value.args[1]) == "int32"
            and str(value.attrs.mode) == "clip")


def _lookup_te(table, codes):
    last = table.shape[0] - 1
    return te.compute(codes.shape, lambda *i: table[tirx.max(tirx.min(codes(*i), last), 0)], name="lookup")


def fused_lookups(mod):
    def rule(bb, var, value):
        if not _is_table_lookup(value):
            return emit_as_is(bb, var, value)
        return bb.emit_te(_lookup_te, value.args[0], value.args[1], primfunc_name_hint=LOOKUP_NAME,
                          name_hint=str(var.name))

    mod = rewrite_main(mod, rule)
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and gv.name_hint.startswith(LOOKUP_NAME):
            mod[gv] = func.with_attr(DECLARED_PATTERN, ELEMENTWISE)
    return mod


def fused_lookup_pass():
    @tvm.transform.module_pass(opt_level=0, name="qcompile.FusedLookup")
    def _pass(mod, _ctx):
        return fused_lookups(mod)

    return _pass
