"""timing.py: a build's time split by stage, each stage timed without the stages nested in it."""

import time

import qcompile
from qcompile.timing import current, record, stage, summary


def test_nested_stages_are_taken_out_of_the_outer_one_and_the_split_adds_up():
    start = time.perf_counter()
    with record() as seconds:
        with stage("outer"):
            time.sleep(0.05)
            with stage("inner"):
                time.sleep(0.1)
            with stage("outer"):  # re-entered: one entry, time added
                time.sleep(0.02)
            time.sleep(0.05)
        assert set(current()) == {"outer", "inner"}
    wall = time.perf_counter() - start
    assert list(seconds) == ["outer", "inner"]
    assert 0.1 <= seconds["inner"] < 0.1 + 0.08
    assert 0.12 <= seconds["outer"] < 0.12 + 0.08  # 0.05 + 0.02 + 0.05, not the inner 0.1
    assert sum(seconds.values()) <= wall
    assert summary(seconds).startswith(f"{sum(seconds.values()):.1f} s (outer ")


def test_stages_outside_a_record_are_not_kept():
    with stage("alone"):
        pass
    assert current() is None


def test_a_build_reports_its_split_and_links_its_code_once(small_cnn_path, tmp_path, monkeypatch):
    """build() returns where its time went; TVM writes the kernels' object files once, though the
    build links them twice (the library it verifies, then the artifact)."""
    from tvm.runtime import executable

    written = []
    original = executable.Executable.export_library
    monkeypatch.setattr(executable.Executable, "export_library",
                        lambda self, *a, **kw: written.append(1) or original(self, *a, **kw))
    result = qcompile.build(small_cnn_path, "host", tmp_path / "m.so")
    assert result.metadata["verification"]["verified"]
    assert len(written) == 1
    assert {"import", "float passes", "compile", "verify", "export"} <= set(result.seconds)
    assert all(s >= 0 for s in result.seconds.values())
