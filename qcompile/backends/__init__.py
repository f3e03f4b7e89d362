"""Backends, one per target kind (cpu, cuda, vulkan), each with the interface of base.Backend.
The kind is looked up here, once; everything else asks the backend."""

from __future__ import annotations

from ..background import Background
from ..targets import get_target
from ..timing import stage
from .base import Backend, Device


def backend_for(spec) -> Backend:
    from .cpu import CPUBackend
    from .cuda import CUDABackend
    from .vulkan import VulkanBackend

    return {"cpu": CPUBackend, "cuda": CUDABackend, "vulkan": VulkanBackend}[spec.kind](spec)


def host_engine(mod):
    """The quantizer's engine: `mod` compiled for this machine, as a Relax VM ready to run."""
    import tvm
    from tvm import relax

    with stage("calibration/simulation compiles"):
        return relax.VirtualMachine(backend_for(get_target("host")).compile(mod), tvm.cpu())


def host_engine_beside(mod) -> Background:
    """host_engine's VM, its Relax passes run now and its code generated on a thread of its own
    (TVM's C++ and LLVM, which let Python go on): the caller compiles something else meanwhile and
    takes the VM from `.result()`."""
    import tvm
    from tvm import relax

    backend = backend_for(get_target("host"))
    with stage("calibration/simulation compiles"):
        lowered = backend.lower(mod)
    return Background(lambda: relax.VirtualMachine(backend.link(lowered), tvm.cpu()))


__all__ = ["Backend", "Device", "backend_for", "host_engine", "host_engine_beside"]
