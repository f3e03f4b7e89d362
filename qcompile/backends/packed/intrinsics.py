"""Int8 dot-product tensor intrinsics per ISA, registered with TVM under the names the schedule
families (backends/families.py) give them.

One description for all of them: C[lanes] (int32) += sum_k A[k] * B[lanes, k], with A the
`kpack` activations of one pixel (contiguous in the packed input) and B a pre-packed weight tile.
Each ISA supplies the implementation. They are registered here rather than taken from
`tvm.s_tir.tensor_intrin`, whose import costs about 70 s (and whose VNNI intrinsic no longer
verifies with LLVM 22: vpdpbusd.512 takes <64 x i8> operands).

The CPU implementations write their operands inline and accumulate into a "global" buffer: in
TVMScript an assignment (`a4 = ...`) is a buffer of its own, and TVM puts only small global-scope
buffers on the stack, so a temporary or a "local" accumulator was a TVMBackendAllocWorkspace call
(and a free) in every parallel iteration of every int8 layer. CUDA's dp4a keeps "local" (registers)."""

from __future__ import annotations

from tvm.script import tirx as T

# Relax-generated kernels index with int64; the descriptions must match them exactly.
I0, I1, I2, I3, I4, I16 = T.int64(0), T.int64(1), T.int64(2), T.int64(3), T.int64(4), T.int64(16)


def _desc(lanes: int, kpack: int, a_dtype: str, scope: str = "global"):
    L, KP, zero = T.int64(lanes), T.int64(kpack), T.int64(0)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (KP,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (L, KP), "int8", offset_factor=1)
        C = T.match_buffer(c, (L,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[zero:L], A[zero:KP], B[zero:L, zero:KP])
            T.writes(C[zero:L])
            for i, k in T.grid(L, KP):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _broadcast_dot_impl(lanes: int, a_dtype: str, llvm_intrin: str):
    """One instruction that sums four products into each int32 lane: the four activations are
    broadcast to every lane, each lane reads its four weights (x86 VNNI vpdpbusd: u8 x s8; ARM
    sdot: s8 x s8)."""
    IL, n = T.int64(lanes), 4 * lanes

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I4,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (IL, I4), "int8", offset_factor=1)
        C = T.match_buffer(c, (IL,), "int32", offset_factor=1, scope="global")
        with T.sblock("root"):
            T.reads(C[I0:IL], A[I0:I4], B[I0:IL, I0:I4])
            T.writes(C[I0:IL])
            C[T.ramp(I0, T.int64(1), lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrin),
                C.vload([I0], f"int32x{lanes}"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([I0], f"{a_dtype}x4"), dtype="int32"), lanes),
                              dtype=f"int8x{n}"),
                B.vload([I0, I0], f"int8x{n}"),
                dtype=f"int32x{lanes}",
            )

    return impl


def _pmaddwd_impl(lanes: int, llvm_intrin: str):
    """x86 AVX2 / AVX-512BW: vpmaddwd on sign-extended int8 weights and int16 activations. Exact
    (no int16 saturation, unlike vpmaddubsw), two products summed into each int32 lane."""
    a_vec, b_vec, c_vec = f"int16x{2 * lanes}", f"int8x{2 * lanes}", f"int32x{lanes}"
    IL = T.int64(lanes)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I2,), "int16", offset_factor=1)
        B = T.match_buffer(b, (IL, I2), "int8", offset_factor=1)
        C = T.match_buffer(c, (IL,), "int32", offset_factor=1, scope="global")
        with T.sblock("root"):
            T.reads(C[I0:IL], A[I0:I2], B[I0:IL, I0:I2])
            T.writes(C[I0:IL])
            C[T.ramp(I0, T.int64(1), lanes)] = C.vload([I0], c_vec) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_intrin),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([I0], "int16x2"), dtype="int32"), lanes), dtype=a_vec),
                T.Cast(a_vec, B.vload([I0, I0], b_vec)),
                dtype=c_vec,
            )

    return impl


def _pmaddubsw_impl(lanes: int, madd_ubsw: str, madd_wd: str):
    """x86 AVX2 / AVX-512BW without VNNI: vpmaddubsw (u8 x s8, adjacent pairs summed into int16)
    then vpmaddwd by ones (the two pairs into each int32 lane): four products per lane, like
    vpdpbusd in two instructions. The int16 pair sum saturates unless each pair of weights stays
    within +-128 (pack.pair_sums_fit), which the pack pass checks before choosing this kernel."""
    n, IL = 4 * lanes, T.int64(lanes)
    i16 = f"int16x{2 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (IL, I4), "int8", offset_factor=1)
        C = T.match_buffer(c, (IL,), "int32", offset_factor=1, scope="global")
        with T.sblock("root"):
            T.reads(C[I0:IL], A[I0:I4], B[I0:IL, I0:I4])
            T.writes(C[I0:IL])
            C[T.ramp(I0, T.int64(1), lanes)] = C.vload([I0], f"int32x{lanes}") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(madd_wd),
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(madd_ubsw),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([I0], "uint8x4"), dtype="int32"), lanes),
                                  dtype=f"int8x{n}"),
                    B.vload([I0, I0], f"int8x{n}"), dtype=i16),
                T.broadcast(T.int16(1), 2 * lanes), dtype=f"int32x{lanes}")

    return impl


def _mmla_desc():
    """C[2 pixels, 2 channels] += A[2 pixels, 8 channels] . B[2 channels, 8 channels]^T; the two
    pixels' channels are a row stride apart in the channels-last input."""
    two, eight = T.int64(2), T.int64(8)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int64()
        A = T.match_buffer(a, (two, eight), "int8", strides=[s0, I1], offset_factor=1)
        B = T.match_buffer(b, (two, eight), "int8", offset_factor=1)
        C = T.match_buffer(c, (two, two), "int32", offset_factor=1, scope="global")
        with T.sblock("root"):
            T.reads(C[I0:two, I0:two], A[I0:two, I0:eight], B[I0:two, I0:eight])
            T.writes(C[I0:two, I0:two])
            for i, j, k in T.grid(two, two, eight):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk], "int32") * T.cast(B[vj, vk], "int32")

    return desc


def _smmla_impl():
    """ARM i8mm: smmla, a 2x8 by 8x2 int8 matrix product into a 2x2 int32 tile."""
    two, eight = T.int64(2), T.int64(8)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int64()
        A = T.match_buffer(a, (two, eight), "int8", strides=[s0, I1], offset_factor=1)
        B = T.match_buffer(b, (two, eight), "int8", offset_factor=1)
        C = T.match_buffer(c, (two, two), "int32", offset_factor=1, scope="global")
        with T.sblock("root"):
            T.reads(C[I0:two, I0:two], A[I0:two, I0:eight], B[I0:two, I0:eight])
            T.writes(C[I0:two, I0:two])
            C[I0, T.ramp(I0, I1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smmla.v4i32.v16i8"), C.vload([I0, I0], "int32x4"),
                T.Shuffle([A.vload([I0, I0], "int8x8"), A.vload([I1, I0], "int8x8")], list(range(16))),
                B.vload([I0, I0], "int8x16"), dtype="int32x4")

    return impl


def _dp4a_impl():
    """CUDA dp4a (sm_61+): four s8 x s8 products summed into one int32; one per output lane."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (I4,), "int8", offset_factor=1)
        B = T.match_buffer(b, (I4, I4), "int8", offset_factor=1)
        C = T.match_buffer(c, (I4,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[I0:I4], A[I0:I4], B[I0:I4, I0:I4])
            T.writes(C[I0:I4])
            # four statements, not a loop: tensorize rejects a loop in the implementation here
            a4 = A.vload([I0], "int8x4")
            C[I0] = C[I0] + T.call_pure_extern("__dp4a", a4, B.vload([I0, I0], "int8x4"), T.int32(0), dtype="int32")
            C[I1] = C[I1] + T.call_pure_extern("__dp4a", a4, B.vload([I1, I0], "int8x4"), T.int32(0), dtype="int32")
            C[I2] = C[I2] + T.call_pure_extern("__dp4a", a4, B.vload([I2, I0], "int8x4"), T.int32(0), dtype="int32")
            C[I3] = C[I3] + T.call_pure_extern("__dp4a", a4, B.vload([I3, I0], "int8x4"), T.int32(0), dtype="int32")

    return impl


_IMPLS = {
    "qcompile_vnni_16x4": lambda: (_desc(16, 4, "uint8"), _broadcast_dot_impl(16, "uint8", "llvm.x86.avx512.vpdpbusd.512")),
    "qcompile_avx512_pmaddwd_16x2": lambda: (_desc(16, 2, "int16"), _pmaddwd_impl(16, "llvm.x86.avx512.pmaddw.d.512")),
    "qcompile_avx2_pmaddwd_8x2": lambda: (_desc(8, 2, "int16"), _pmaddwd_impl(8, "llvm.x86.avx2.pmadd.wd")),
    "qcompile_avx2_pmaddubsw_8x4": lambda: (_desc(8, 4, "uint8"),
                                            _pmaddubsw_impl(8, "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd")),
    "qcompile_sdot_4x4": lambda: (_desc(4, 4, "int8"), _broadcast_dot_impl(4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8")),
    "qcompile_dp4a": lambda: (_desc(4, 4, "int8", "local"), _dp4a_impl()),
    "qcompile_smmla_2x2x8": lambda: (_mmla_desc(), _smmla_impl()),
}
_registered: set[str] = set()


def register(name: str) -> str:
    """Register intrinsic `name` with TVM once per process (schedules and replayed tuning records need it)."""
    if name not in _registered:
        from tvm.s_tir import TensorIntrin

        TensorIntrin.register(name, *_IMPLS[name](), override=True)
        _registered.add(name)
    return name


def register_all() -> None:
    for name in _IMPLS:
        register(name)
