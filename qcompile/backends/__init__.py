"""Backends, one per target kind (cpu, cuda, vulkan), each with the interface of base.Backend.
The kind is looked up here, once; everything else asks the backend."""

from __future__ import annotations

from .base import Backend, Device


def backend_for(spec) -> Backend:
    from .cpu import CPUBackend
    from .cuda import CUDABackend
    from .vulkan import VulkanBackend

    return {"cpu": CPUBackend, "cuda": CUDABackend, "vulkan": VulkanBackend}[spec.kind](spec)


from .engine import host_engine, host_engine_beside  # noqa: E402 - it looks backends up here

__all__ = ["Backend", "Device", "backend_for", "host_engine", "host_engine_beside"]
