"""The TVM runtime a device needs: libtvm_runtime.so and libtvm_ffi.so for the target's
architecture, plus qcompile_run (runner/qcompile_run.cc) built with the target's compiler.

Native libraries come from the installed wheels; foreign ones from the same pinned versions of the
apache-tvm and apache-tvm-ffi wheels for that platform (fetched once with `pip download`, cached).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from ...atomic import atomic_dir
from ...errors import QCompileError
from ...targets import TargetSpec
from ...toolchain import compiler, run_checked

RUNNER_SOURCE = Path(__file__).resolve().parent / "runner" / "qcompile_run.cc"
# linked into every CPU artifact: its parallel-for runtime (see the file)
PARALLEL_SOURCE = RUNNER_SOURCE.with_name("qcompile_parallel.cc")
CACHE = Path(os.environ.get("QCOMPILE_CACHE", Path.home() / ".cache" / "qcompile"))
RUNTIME_LIBS = {"libtvm_runtime.so": "tvm/lib/libtvm_runtime.so", "libtvm_ffi.so": "tvm_ffi/lib/libtvm_ffi.so"}
PACKAGES = ("apache-tvm", "apache-tvm-ffi")


def _ffi_include() -> Path:
    import tvm_ffi

    return Path(tvm_ffi.__file__).resolve().parent / "include"


def _installed_lib(rel: str) -> Path:
    package, rest = rel.split("/", 1)
    module = __import__(package)
    return Path(module.__file__).resolve().parent / rest


def fetch_wheels(wheel_platform: str) -> list[Path]:
    """The pinned apache-tvm and apache-tvm-ffi wheels for `wheel_platform`, downloaded once."""
    dest = CACHE / "wheels" / wheel_platform
    pins = [f"{name}=={metadata.version(name)}" for name in PACKAGES]
    wheels = [_find_wheel(dest, name) for name in PACKAGES]
    if all(wheels):
        return wheels
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", wheel_platform, "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
           "--implementation", "cp", "-d", str(dest), *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [_find_wheel(dest, name) for name in PACKAGES]
    if proc.returncode != 0 or not all(wheels):
        raise QCompileError(f"cannot fetch the TVM runtime for {wheel_platform} ({' '.join(pins)}); "
                            f"pip said: {(proc.stderr.strip().splitlines() or ['nothing'])[-1]}")
    return wheels


def _find_wheel(folder: Path, package: str) -> Path | None:
    stem = f"{package.replace('-', '_')}-{metadata.version(package)}-"
    found = sorted(folder.glob(f"{stem}*.whl")) if folder.is_dir() else []
    return found[0] if found else None


def _foreign_libs(spec: TargetSpec, dest: Path) -> None:
    wheel_platform = spec.runtime.get("wheel_platform")
    if not wheel_platform:
        raise QCompileError(f"no prebuilt TVM runtime exists for target '{spec.name}' ({spec.arch}); "
                            "its artifact is build-verified only (build libtvm_runtime from TVM's source for it)")
    for wheel in fetch_wheels(wheel_platform):
        with zipfile.ZipFile(wheel) as zf:
            for name, member in RUNTIME_LIBS.items():
                if member in zf.namelist():
                    (dest / name).write_bytes(zf.read(member))


def runtime_dir(spec: TargetSpec) -> Path:
    """A cached folder with the runtime libraries and the runner for `spec`'s architecture."""
    native = spec.is_native
    key_src = RUNNER_SOURCE.read_bytes() + repr([metadata.version(p) for p in PACKAGES]).encode()
    key = f"{spec.arch}-{spec.toolchain.get('libc', 'glibc')}-{hashlib.sha256(key_src).hexdigest()[:12]}"
    final = CACHE / "runtime" / key
    if (final / "qcompile_run").is_file():
        return final
    cc = compiler(spec)
    with atomic_dir(final) as tmp:
        if native:
            for name, rel in RUNTIME_LIBS.items():
                shutil.copy2(_installed_lib(rel), tmp / name)
        else:
            _foreign_libs(spec, tmp)
        inc = _ffi_include()
        run_checked([cc, "-std=c++17", "-O2", f"-I{inc}", f"-I{inc / 'dlpack'}", str(RUNNER_SOURCE),
                     "-o", str(tmp / "qcompile_run"), f"-L{tmp}", "-Wl,--no-as-needed", "-ltvm_ffi",
                     "-ltvm_runtime", "-ldl", "-Wl,-rpath,$ORIGIN"], f"building the runner for '{spec.name}'")
    return final
