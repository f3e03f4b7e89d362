"""Targets are data: one TOML file per device in `targets/`, resolved here (the host's CPU flags
filled in); the backend for its kind turns it into a TVM target."""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import QCompileError

TARGETS_DIR = Path(os.environ.get("QCOMPILE_TARGETS", Path(__file__).resolve().parent.parent / "targets"))

# /proc/cpuinfo flag -> LLVM feature, in the order LLVM wants them.
_X86_FLAGS = [
    ("avx2", "+avx2"), ("fma", "+fma"), ("f16c", "+f16c"), ("bmi2", "+bmi2"),
    ("avx512f", "+avx512f"), ("avx512bw", "+avx512bw"), ("avx512vl", "+avx512vl"),
    ("avx512dq", "+avx512dq"), ("avx512_vnni", "+avx512vnni"), ("avx_vnni", "+avxvnni"),
]
_ARM_FLAGS = [("asimd", "+neon"), ("asimddp", "+dotprod"), ("i8mm", "+i8mm")]


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    arch: str  # x86_64, aarch64, armv7
    schedule_family: str
    llvm: dict
    cuda: dict | None = None
    webgpu: dict | None = None  # the vulkan kind: WGSL kernels run through wgpu (backends/vulkan/)
    toolchain: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)
    source: Path | None = None

    @property
    def is_native(self) -> bool:
        return self.arch == platform.machine() and self.toolchain.get("libc", "glibc") == "glibc"

    @property
    def kind(self) -> str:
        """The backend that compiles for it (backends.backend_for): cpu, cuda or vulkan."""
        return "cuda" if self.cuda else "vulkan" if self.webgpu is not None else "cpu"

    def features(self) -> list[str]:
        return list(self.llvm.get("mattr", []))

    def to_json(self) -> dict:
        """Everything but the source path: an artifact carries its target, whatever targets/ holds later."""
        return {k: v for k, v in self.__dict__.items() if k != "source"}

    @staticmethod
    def from_json(data: dict) -> "TargetSpec":
        return TargetSpec(**data)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


def detect_host() -> dict:
    """The host's arch, LLVM target fields and schedule family, from the CPU's own flags."""
    arch = platform.machine()
    flags = _cpu_flags()
    if arch == "x86_64":
        mattr = [feat for flag, feat in _X86_FLAGS if flag in flags]
        family = "x86-vnni" if "+avx512vnni" in mattr else "x86-avx512" if "+avx512bw" in mattr else "x86-avx2"
        return {"arch": arch, "family": family, "llvm": {"mtriple": "x86_64-linux-gnu", "mattr": mattr}}
    if arch == "aarch64":
        mattr = [feat for flag, feat in _ARM_FLAGS if flag in flags] or ["+neon"]
        family = "arm-i8mm" if "+i8mm" in mattr else "arm-dotprod" if "+dotprod" in mattr else "arm-neon"
        return {"arch": arch, "family": family, "llvm": {"mtriple": "aarch64-linux-gnu", "mattr": mattr}}
    raise QCompileError(f"host CPU architecture '{arch}' is not supported (x86_64 and aarch64 are)")


def _from_toml(path: Path) -> TargetSpec:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise QCompileError(f"{path}: not a valid target file: {err}") from None
    llvm = dict(data.get("llvm", {}))
    arch, family = data.get("arch", ""), data.get("schedule_family", "")
    if "auto" in (arch, family, llvm.get("mtriple"), llvm.get("mattr")):
        host = detect_host()
        arch = host["arch"] if arch == "auto" else arch
        family = host["family"] if family == "auto" else family
        llvm = {**llvm, **{k: v for k, v in host["llvm"].items() if llvm.get(k, "auto") == "auto"}}
    missing = [k for k in ("name", "arch", "schedule_family") if not data.get(k)]
    if missing or "mtriple" not in llvm:
        raise QCompileError(f"{path}: target file lacks {', '.join(missing or ['llvm.mtriple'])}")
    return TargetSpec(
        name=data["name"], description=data.get("description", ""), arch=arch, schedule_family=family,
        llvm=llvm, cuda=data.get("cuda"), webgpu=data.get("webgpu"), toolchain=data.get("toolchain", {}),
        runtime=data.get("runtime", {}), source=path,
    )


def target_names() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def list_targets() -> list[TargetSpec]:
    return [get_target(name) for name in target_names()]


def get_target(name_or_path: str) -> TargetSpec:
    """A target by name (a file in targets/) or by the path of a target file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return _from_toml(path)
    candidate = TARGETS_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise QCompileError(f"unknown target '{name_or_path}'; known targets: {', '.join(target_names())}")
    return _from_toml(candidate)
