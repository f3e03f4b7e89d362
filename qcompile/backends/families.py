"""Schedule families as data: one record per ISA family (its backend kind, its packed int8 kernel,
its layout), looked up by the name a target file gives. Adding a CPU family is one entry in
FAMILIES (and, for a new instruction, its intrinsic in packed/intrinsics.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import QCompileError


@dataclass(frozen=True)
class Int8Kernel:
    """How a family computes int8 convolutions: `lanes` output channels per vector, `kpack`
    input channels reduced per instruction, activations widened/shifted to `act_dtype`."""

    lanes: int
    kpack: int
    act_dtype: str  # uint8 (x86 VNNI), int8 (ARM sdot), int16 (exact pmaddwd / NEON widening)
    intrin: str | None  # None: LLVM vectorizes the packed loops on its own
    instruction: str  # what to look for in the assembly
    pixels: int = 1  # output pixels per instruction (2 for a matrix-multiply instruction)
    fallback: "Int8Kernel | None" = None  # for layers whose output width is not a multiple of `pixels`
    tensor_core_matmul_min: int | None = None  # matmuls with every dimension over this stay for tensor cores
    # The instruction sums pairs of u8 x s8 products into int16 (x86 vpmaddubsw), which saturates
    # unless the positive (and the negative) weights of every pair sum to at most this in magnitude;
    # a layer whose weights do not keep to it takes `fallback` (exact). None: no such limit.
    pair_limit: int | None = None
    # Depthwise layers in float32 fused multiply-adds on the integer codes: exact (a product of two
    # 8-bit codes is below 2**15, a sum of under 2**9 of them below float32's 2**24), one FMA per
    # vector where x86 needs a widen, vpmulld and vpaddd in int32 (a 64x64x24 3x3 layer alone: 1.5x
    # on AVX2). The float kernel schedules them: the family's float_lanes must equal `lanes`.
    depthwise_float: bool = False
    # Output-channel vectors per register tile: each activation broadcast then feeds this many
    # instructions. 2 where 32 vector registers hold the 2 x 7 accumulators (AVX-512: a 3x3 layer of
    # 16 -> 32 channels at batch 8, 97 -> 75 us); AVX2's 16 registers keep 1 x 8.
    channel_blocks: int = 1

    def for_layer(self, width: int, stride: int) -> "Int8Kernel":
        """This kernel, or its fallback where the instruction's pixels are not adjacent in a row."""
        if self.pixels == 1 or self.fallback is None or (width % self.pixels == 0 and stride == 1):
            return self
        return self.fallback

    def for_weights(self, fits_pairs) -> "Int8Kernel":
        """This kernel, or its fallback where `fits_pairs(self)` says a layer's packed weights could
        saturate its int16 pair sums (pair_limit)."""
        if self.pair_limit is None or self.fallback is None or fits_pairs(self):
            return self
        return self.fallback

    def for_tile(self, lanes: int, kpack: int) -> "Int8Kernel":
        """The kernel (this one or its fallback) whose packing a scheduled function has."""
        if (lanes, kpack) == (self.lanes, self.kpack) or self.fallback is None:
            return self
        return self.fallback

    def shift(self, input_dtype: str) -> int:
        """Added to every activation so it fits `act_dtype` (and subtracted back through the bias)."""
        if self.act_dtype == "uint8" and input_dtype == "int8":
            return 128
        if self.act_dtype == "int8" and input_dtype == "uint8":
            return -128
        return 0


@dataclass(frozen=True)
class Family:
    """What a backend needs to know about one ISA family."""

    name: str
    kind: str  # the backend that compiles it: cpu | cuda | vulkan
    int8: Int8Kernel | None = None  # the packed int8 kernel; None: TVM's legalized int8 kernels
    channels_last: bool = False  # int8 convolutions go NHWC before packing (a pixel's channels contiguous)
    float_lanes: int | None = None  # float32 layers into packed kernels with this many lanes; None: not packed

    def __post_init__(self):
        if self.int8 is not None and self.int8.depthwise_float and self.float_lanes != self.int8.lanes:
            raise ValueError(f"family {self.name}: depthwise_float needs float_lanes == int8 lanes")

    @property
    def int4_storage(self) -> bool:
        """Whether 4-bit weights are stored two per byte (unpacked inside the packed int8 kernels)."""
        return self.int8 is not None and self.int8.kpack % 2 == 0


_SDOT = Int8Kernel(4, 4, "int8", "qcompile_sdot_4x4", "sdot")

FAMILIES = {f.name: f for f in [
    # float_lanes: float32 values per vector register (AVX-512 16, AVX2 8, NEON 4)
    Family("x86-vnni", "cpu", Int8Kernel(16, 4, "uint8", "qcompile_vnni_16x4", "vpdpbusd", depthwise_float=True,
                                         channel_blocks=2), channels_last=True, float_lanes=16),
    Family("x86-avx512", "cpu", Int8Kernel(16, 2, "int16", "qcompile_avx512_pmaddwd_16x2", "vpmaddwd",
                                           depthwise_float=True, channel_blocks=2), channels_last=True, float_lanes=16),
    # vpmaddubsw (u8 x s8, four products per int32 lane) where a layer's weights cannot saturate it
    # (7-bit or 4-bit weights, QuantConfig.weight_bits); exact vpmaddwd on int16 for the others
    Family("x86-avx2", "cpu", Int8Kernel(8, 4, "uint8", "qcompile_avx2_pmaddubsw_8x4", "vpmaddubsw", pair_limit=128,
                                         fallback=Int8Kernel(8, 2, "int16", "qcompile_avx2_pmaddwd_8x2", "vpmaddwd"),
                                         depthwise_float=True),
           channels_last=True, float_lanes=8),
    Family("arm-dotprod", "cpu", _SDOT, channels_last=True, float_lanes=4),
    # smmla: 2 pixels x 2 output channels x 8 input channels; sdot where the width is odd
    Family("arm-i8mm", "cpu", Int8Kernel(2, 8, "int8", "qcompile_smmla_2x2x8", "smmla", pixels=2, fallback=_SDOT),
           channels_last=True, float_lanes=4),
    Family("arm-neon", "cpu", Int8Kernel(8, 2, "int16", None, "smlal"), channels_last=True, float_lanes=4),
    # CUDA: one dp4a per (output channel, 4 input channels); lanes = output channels per thread group.
    # The GPU kernels stay NCHW.
    Family("cuda", "cuda", Int8Kernel(4, 4, "int8", "qcompile_dp4a", "dp4a", tensor_core_matmul_min=64)),
    # Vulkan: WGSL's dot4I8Packed on 32-bit words (vulkan/int8.py), not a packed kernel of this table.
    Family("wgsl", "vulkan"),
]}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise QCompileError(f"unknown schedule family '{name}'; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
