"""How many threads TVM's CPU runtime runs kernels on.

TVM's default (without TVM_NUM_THREADS) is half the logical CPUs on every x86 machine, on the
assumption of two hyper-threads per core: on a machine without SMT that is half the cores (one
thread on a 2-core machine, while onnxruntime uses both). qcompile sets TVM_NUM_THREADS to the
physical cores this process may run on, unless the user set TVM_NUM_THREADS or OMP_NUM_THREADS.
The variable is read at every parallel launch and inherited by tuning workers."""

from __future__ import annotations

import os
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")


def physical_cores(sys_cpu: Path = SYS_CPU) -> int:
    """Distinct (package, core) pairs among the CPUs in this process's affinity mask."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology (a container without sysfs): count it as a core
    return max(1, len(cores))


def use_physical_cores() -> int:
    """Set TVM_NUM_THREADS unless the user chose; returns the thread count TVM will use."""
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(name, "").strip().isdigit():
            return max(1, int(os.environ[name]))
    n = physical_cores()
    os.environ["TVM_NUM_THREADS"] = str(n)
    return n
