"""Write-then-rename helpers: what a failed step leaves behind is nothing, never a partial file."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import QCompileError


def _tmp_name(path: Path) -> Path:
    _remove_stale(path.parent, re.compile(rf"^\.{re.escape(path.name)}\.tmp(\d+)$"))
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale(folder: Path, pattern: re.Pattern) -> None:
    """Remove what a killed qcompile process (kill -9, a crash) left in `folder`: the entries whose
    name matches `pattern` with a process id (its first group) that no longer runs."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            with suppress(OSError):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


_swept = False


def fresh_dir(prefix: str) -> Path:
    """A new folder qcompile-PREFIX-PID-XXXX in the temporary directory. The first call of a process
    removes the ones that processes no longer running left behind."""
    global _swept
    if not _swept:
        _swept = True
        _remove_stale(Path(tempfile.gettempdir()), re.compile(r"^qcompile-[a-z0-9-]+?-(\d+)-[^-]+$"))
    return Path(tempfile.mkdtemp(prefix=f"qcompile-{prefix}-{os.getpid()}-"))


def check_writable(path, folder: bool = False) -> Path:
    """`path` as a Path, if a file (or with `folder`, a folder) can be written there; else the one-line
    error the write would end in, raised before any work is done."""
    path = Path(path)
    if path.is_symlink() and folder:
        raise QCompileError(f"{path}: is a symbolic link; name a folder to write the bundle to")
    if path.is_dir() and not folder:
        raise QCompileError(f"{path}: is a folder; name a file (e.g. {path / 'model.so'})")
    if path.exists() and folder and not path.is_dir():
        raise QCompileError(f"{path}: is a file, not a folder")
    parent = next(p for p in path.absolute().parents if p.exists())  # the folder mkdir would start from
    if not parent.is_dir():
        raise QCompileError(f"{path}: cannot write there: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QCompileError(f"{path}: cannot write there: folder {parent} is not writable")
    return path


@contextmanager
def _writing(path: Path):
    try:
        yield
    except OSError as err:
        raise QCompileError(f"{path}: cannot write it ({err.strerror or err})") from None


@contextmanager
def atomic_file(path):
    """Yields a temporary path beside `path`; renamed onto `path` only if the block succeeds."""
    path = check_writable(path)
    tmp = _tmp_name(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        with _writing(path):
            os.replace(tmp, path)
    finally:
        with suppress(OSError):  # a failing cleanup must not hide the error that brought us here
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path):
    """Yields an empty temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = check_writable(path, folder=True)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    with _writing(path):
        tmp.mkdir(parents=True)
    try:
        yield tmp
        with _writing(path):
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
