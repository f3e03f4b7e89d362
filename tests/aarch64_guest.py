"""An aarch64 Python with TVM, run under qemu-aarch64: the remote device of the RPC tuning tests.

Debian's arm64 python3.11 packages (unpacked, not installed; `.ci/setup` enables the arm64
architecture for apt) and the aarch64 wheels of numpy and the pinned TVM, in ~/.cache/qcompile.
TVM's RPC server re-launches itself through `sys.executable`; under qemu-user that must be a
wrapper script that starts qemu again, which the launcher sets."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "qcompile" / "aarch64-python"
DEBS = ["libc6", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "zlib1g", "libffi8", "libssl3",
        "libexpat1", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6", "libreadline8",
        "libdb5.3", "libgdbm6", "libcrypt1", "libstdc++6", "libgcc-s1"]
WHEELS = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy==2.3.5", "ml_dtypes==0.6.0",
          "typing_extensions==4.16.0", "psutil==7.2.2", "cloudpickle==3.1.2"]
LAUNCHER = """import os, runpy, sys
sys.executable = os.environ["QCOMPILE_GUEST_PYTHON"]  # workers re-launch through qemu
sys.argv = ["rpc_server", *sys.argv[1:]]
runpy.run_module("tvm.exec.rpc_server", run_name="__main__")
"""


def guest_python() -> Path:
    """The wrapper script that runs the aarch64 Python (built once)."""
    wrapper = CACHE / "python"
    if wrapper.is_file():
        return wrapper
    tmp = CACHE.with_name(CACHE.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "debs").mkdir(parents=True)
    root, site = tmp / "root", tmp / "site"
    subprocess.run(["apt-get", "download", *[f"{d}:arm64" for d in DEBS]], cwd=tmp / "debs", check=True,
                   capture_output=True)
    for deb in (tmp / "debs").glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--no-deps",
                    "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
                    "--python-version", "3.11", "-d", str(tmp / "wheels"), *WHEELS], check=True, capture_output=True)
    for wheel in (tmp / "wheels").glob("*.whl"):
        zipfile.ZipFile(wheel).extractall(site)
    shutil.rmtree(tmp / "debs")
    shutil.rmtree(tmp / "wheels")
    (tmp / "launch_rpc_server.py").write_text(LAUNCHER)
    (tmp / "python").write_text(f'#!/bin/sh\nexport PYTHONPATH="{CACHE / "site"}"\n'
                                f'exec qemu-aarch64 -L "{CACHE / "root"}" "{CACHE / "root"}/usr/bin/python3.11" "$@"\n')
    (tmp / "python").chmod(0o755)
    shutil.rmtree(CACHE, ignore_errors=True)
    tmp.rename(CACHE)
    return wrapper


def rpc_server_command(tracker_port: int, key: str, port: int) -> tuple[list[str], dict]:
    python = guest_python()
    cmd = [str(python), str(CACHE / "launch_rpc_server.py"), "--host", "127.0.0.1", "--port", str(port),
           "--port-end", str(port + 10), "--tracker", f"127.0.0.1:{tracker_port}", "--key", key]
    return cmd, {"QCOMPILE_GUEST_PYTHON": str(python)}
