"""Backends, one per target kind (cpu, cuda, vulkan), each with the interface of base.Backend.
The kind is looked up here, once; everything else asks the backend."""

from __future__ import annotations

import dataclasses

from ..background import Background
from ..targets import get_target
from ..timing import stage
from .base import Backend, Device
from .engine import Engine, quick_library


def backend_for(spec) -> Backend:
    from .cpu import CPUBackend
    from .cuda import CUDABackend
    from .vulkan import VulkanBackend

    return {"cpu": CPUBackend, "cuda": CUDABackend, "vulkan": VulkanBackend}[spec.kind](spec)


def host_engine(mod) -> Engine:
    """The quantizer's engine (engine.py): `mod` compiled for this machine, run as a Relax VM is:
    `engine["main"](*tensors)`."""
    with stage("calibration/simulation compiles"):
        return host_engine_beside(mod).result()


def host_engine_beside(mod) -> Background:
    """host_engine's Engine, its Relax passes run now and its code generated on a thread of its own
    (TVM's C++ and LLVM, which let Python go on): the caller compiles something else meanwhile and
    takes the Engine from `.result()` (its library is loaded on the caller's thread)."""
    spec = get_target("host")
    quick = backend_for(dataclasses.replace(spec, llvm={**spec.llvm, "opt-level": 0}))
    with stage("calibration/simulation compiles"):
        lowered = quick.lower(mod)  # the Relax passes do not depend on LLVM's optimization level
    return Background(quick_library, quick, lowered, then=lambda made: Engine(*made, lowered, backend_for(spec)))


__all__ = ["Backend", "Device", "backend_for", "host_engine", "host_engine_beside"]
