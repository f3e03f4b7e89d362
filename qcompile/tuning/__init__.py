"""Autotuning with MetaSchedule and its XGBoost cost model, on this machine or on devices at a TVM
RPC tracker: tasks.py extracts the kernels a build compiles, search.py tunes them (every trial
kept at once: an interrupted run resumes), verify.py admits a record only where it is right and
faster than the default schedule. Builds use verified records only."""

from __future__ import annotations

from ..backends.cpu.rpc import RPC
from .search import TuneResult, tune
from .verify import TaskResult

__all__ = ["RPC", "TaskResult", "TuneResult", "tune"]
