"""Where a build's time goes: named stages timed exclusively (a stage nested in another is taken
out of the outer one's time), so the split adds up to the whole. Stages outside `record()` cost
nothing and are not kept."""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar

_open: ContextVar[list | None] = ContextVar("qcompile_stages", default=None)


@contextmanager
def record():
    """Collects the seconds of every stage entered inside it: {stage name: seconds}, in first-seen order."""
    seconds: dict[str, float] = {}
    token = _open.set([seconds, []])
    try:
        yield seconds
    finally:
        _open.reset(token)


def current() -> dict[str, float] | None:
    """The stages recorded so far by the enclosing record(), or None outside one."""
    state = _open.get()
    return None if state is None else dict(state[0])


@contextmanager
def stage(name: str):
    state = _open.get()
    if state is None:
        yield
        return
    seconds, stack = state
    now = time.perf_counter()
    if stack:  # pause the enclosing stage
        outer, started = stack[-1]
        seconds[outer] = seconds.get(outer, 0.0) + now - started
    stack.append((name, now))
    try:
        yield
    finally:
        now = time.perf_counter()
        _, started = stack.pop()
        seconds[name] = seconds.get(name, 0.0) + now - started
        if stack:
            stack[-1] = (stack[-1][0], now)


def summary(seconds: dict[str, float]) -> str:
    """'21.3 s (import 1.9, compile 3.5, ...)'."""
    parts = ", ".join(f"{name} {s:.1f}" for name, s in seconds.items() if s >= 0.05)
    return f"{sum(seconds.values()):.1f} s ({parts})"
