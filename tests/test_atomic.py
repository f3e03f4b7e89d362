"""What a killed qcompile process leaves behind (kill -9 during an export, a crash while a library
was loaded) is removed by the next one; nothing of a process still running is touched."""

import os
import subprocess
import sys
import tempfile

from qcompile import atomic


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_process_temporary_folders_are_removed_by_the_next_fresh_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(atomic, "_swept", False)
    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f"qcompile-export-{dead}-ab12cd34", tmp_path / f"qcompile-wgsl-tune-{dead}-x_9y8z7w"]
    for folder in stale:
        folder.mkdir()
        (folder / "kernel.so").write_bytes(b"\0")
    kept = [tmp_path / f"qcompile-loaded-{alive}-ab12cd34", tmp_path / "qcompile-tune-nopid", tmp_path / "other"]
    for folder in kept:
        folder.mkdir()
    fresh = atomic.fresh_dir("run")
    assert fresh.parent == tmp_path and fresh.name.startswith(f"qcompile-run-{os.getpid()}-")
    assert not any(folder.exists() for folder in stale)
    assert all(folder.exists() for folder in kept)


def test_a_dead_process_partial_file_beside_the_output_is_removed_by_the_next_write(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    (tmp_path / f".m.so.tmp{dead}").write_bytes(b"partial")
    (tmp_path / f".m.so.tmp{alive}").write_bytes(b"another build, still running")
    with atomic.atomic_file(tmp_path / "m.so") as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".m.so.tmp{alive}", "m.so"]
    assert (tmp_path / "m.so").read_bytes() == b"whole"
