"""Backends, one per target kind (cpu, cuda, vulkan), each with the interface of base.Backend.
The kind is looked up here, once; everything else asks the backend."""

from __future__ import annotations

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

    from ..targets import get_target
    from ..timing import stage

    with stage("calibration/simulation compiles"):
        return relax.VirtualMachine(backend_for(get_target("host")).compile(mod), tvm.cpu())


__all__ = ["Backend", "Device", "backend_for", "host_engine"]
