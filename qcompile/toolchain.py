"""Compilers and emulators named by a target file, checked before any work starts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import QCompileError
from .targets import TargetSpec


def compiler(spec: TargetSpec) -> str:
    cc = spec.toolchain.get("cc", "g++")
    if shutil.which(cc) is None:
        pkg = spec.toolchain.get("debian_package", cc)
        raise QCompileError(
            f"target '{spec.name}' needs the compiler '{cc}', which is not installed; "
            f"install it with: apt-get install {pkg}"
        )
    return cc


def emulator(spec: TargetSpec) -> list[str]:
    cmd = list(spec.runtime.get("emulator", []))
    if cmd and shutil.which(cmd[0]) is None:
        pkg = spec.runtime.get("emulator_debian_package", cmd[0])
        raise QCompileError(f"running '{spec.name}' artifacts here needs '{cmd[0]}'; install it with: apt-get install {pkg}")
    return cmd


def link_options(spec: TargetSpec, workdir: Path) -> list[str]:
    """Extra linker options. Bionic targets link against stand-ins carrying Bionic's sonames."""
    if spec.toolchain.get("libc") != "bionic":
        return []
    cc = compiler(spec)
    empty = workdir / "empty.c"
    empty.write_text("")
    for lib in ("libc.so", "libm.so"):
        run_checked([cc, "-shared", "-nostdlib", "-x", "c", str(empty), f"-Wl,-soname,{lib}", "-o", str(workdir / lib)], spec.name)
    return ["-nostdlib", f"-L{workdir}", "-Wl,--no-as-needed", "-lc", "-lm", "-Wl,--as-needed", "-lgcc"]


def run_checked(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise QCompileError(f"{what}: '{Path(cmd[0]).name}' failed: {err[-1] if err else proc.returncode}")
    return proc

