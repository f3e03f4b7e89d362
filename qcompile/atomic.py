"""Write-then-rename helpers: what a failed step leaves behind is nothing, never a partial file."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_file(path):
    """Yields a temporary path beside `path`; renamed onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path):
    """Yields an empty temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
