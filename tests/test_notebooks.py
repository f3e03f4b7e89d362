"""The notebooks run top to bottom, as a new user would run them: each in a fresh kernel, in an
empty folder, its own asserts included. A failing cell fails the test with that cell's error."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01-quickstart.ipynb", "02-raspberry-pi.ipynb", "03-mixed-precision.ipynb"]


# The quickstart runs in the default suite; the cross-compiling and mixed-precision notebooks
# (about 2.5 min together here) run with -m slow.
@pytest.mark.parametrize("path", [p if p.name.startswith("01") else pytest.param(p, marks=pytest.mark.slow)
                                  for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs are not committed"
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "every notebook shows at least one plot"
    assert any("ok" in o.get("text", "").split() for o in outputs if o.output_type == "stream"), \
        "the notebook's own checks ran to their end"


def test_no_document_starts_an_rpc_tracker_or_server_on_every_interface():
    """Anyone who reaches a TVM RPC tracker or server can run code on the device: what qcompile
    documents binds to loopback or a named address, never TVM's default 0.0.0.0."""
    root = Path(__file__).resolve().parents[1]
    for path in [root / "README.md", *NOTEBOOKS]:
        text = path.read_text()
        commands = [line for line in text.replace("\\n", "\n").splitlines() if "tvm.exec.rpc_" in line]
        assert commands or path.name != "README.md"
        for line in commands:
            assert "--host" in line and "0.0.0.0" not in line, f"{path.name}: {line.strip()}"
