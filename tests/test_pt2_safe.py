"""A .pt2 file is untrusted input: building one must never run code from it.

Each hostile archive starts from a real `torch.export.save` and has members rewritten. Every test
also loads it with `torch.export.load` afterwards and checks the payload does run there, so a
payload that silently fails to fire cannot make a test pass."""

import json
import pathlib
import pickle
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch

from qcompile.frontends.pt2_safe import load_program


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.register_buffer("shift", torch.tensor([0.5, -0.5]))
        self.scale = torch.tensor([2.0])  # a lifted tensor constant: data/constants/tensor_0

    def forward(self, x):
        return torch.relu(self.conv(x)) * self.scale + self.shift.view(1, 2, 1, 1)


class _Payload:
    """Unpickling this touches `marker`: the stand-in for any command."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> pathlib.Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clean") / "model.pt2"
    torch.export.save(torch.export.export(_Net().eval(), (torch.randn(1, 1, 6, 6),)), str(path))
    return path


def _rewrite(src, dst, changes):
    """Copy the archive, replacing members (paths below the root folder) by bytes or by f(old bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = next(n for n in zin.namelist() if n.endswith("/archive_format")).split("/")[0] + "/"
        members = {n[len(root):]: zin.read(n) for n in zin.namelist()}
        for name, change in changes.items():
            members[name] = change(members[name]) if callable(change) else change
        for name, data in members.items():
            zout.writestr(root + name, data)
    return dst


def _edit_json(edit):
    def change(data):
        obj = json.loads(data)
        edit(obj)
        return json.dumps(obj).encode()
    return change


def _mark_pickled(path_name):
    def edit(config):
        (meta,) = [m for m in config["config"].values() if m["path_name"] == path_name]
        meta["use_pickle"] = True
    return _edit_json(edit)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "qcompile.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def _assert_refused(result, *needles):
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("qcompile: error:"), result.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def _assert_armed(path, marker):
    """torch's own loader runs the payload (whether or not it then fails)."""
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.export.load(str(path))
        except Exception:  # noqa: BLE001
            pass
    assert marker.exists(), "the hostile archive did not fire under torch.export.load"


def _hostile_members(case, payload):
    if case == "weight":
        return "data/weights/weight_0", {"data/weights/model_weights_config.json": _mark_pickled("weight_0"),
                                         "data/weights/weight_0": payload}
    if case == "constant":
        return "data/constants/tensor_0", {"data/constants/model_constants_config.json": _mark_pickled("tensor_0"),
                                           "data/constants/tensor_0": payload}

    def to_opaque(config):  # torch reads opaque_obj_N constants with pickle.loads
        # as torch.export.save writes one: torch 2.13's loader sizes every non-pickled member first
        config["config"]["scale"].update(path_name="opaque_obj_0", use_pickle=True, tensor_meta=None)
    return "data/constants/opaque_obj_0", {"data/constants/model_constants_config.json": _edit_json(to_opaque),
                                           "data/constants/opaque_obj_0": payload}


@pytest.mark.parametrize("case", ["weight", "constant", "opaque_constant"])
def test_pickled_object_member_is_refused_and_never_run(clean, tmp_path, case):
    marker, out = tmp_path / "MARKER", tmp_path / "out"
    out.mkdir()
    member, changes = _hostile_members(case, pickle.dumps(_Payload(marker)))
    model = _rewrite(clean, tmp_path / "model.pt2", changes)
    result = _cli("build", model, "-o", out / "out.so", cwd=tmp_path)
    _assert_refused(result, f"model.pt2: member '{member}' is not a plain tensor (a pickled object)")
    assert not marker.exists(), "the payload ran"
    assert list(out.iterdir()) == []
    _assert_armed(model, marker)


def test_sample_inputs_are_never_read(clean, tmp_path):
    marker, out = tmp_path / "MARKER", tmp_path / "out"
    out.mkdir()
    model = _rewrite(clean, tmp_path / "model.pt2", {"data/sample_inputs/model.pt": pickle.dumps(_Payload(marker))})
    result = _cli("build", model, "-o", out / "out.so", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "out.so").is_file()
    assert not marker.exists(), "the payload ran"
    _assert_armed(model, marker)


def test_python_in_a_symbolic_shape_is_refused(clean, tmp_path):
    """torch passes SymInt expressions to sympy.sympify, which evaluates them as Python."""
    marker = tmp_path / "MARKER"

    def edit(program):
        code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
        program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {
            "as_expr": {"expr_str": code, "hint": {"as_int": 1}}}
    model = _rewrite(clean, tmp_path / "model.pt2", {"models/model.json": _edit_json(edit)})
    result = _cli("build", model, "-o", tmp_path / "out.so", cwd=tmp_path)
    _assert_refused(result, "member 'models/model.json' has a symbolic shape that is not a sympy expression")
    assert not marker.exists(), "the payload ran"
    _assert_armed(model, marker)


def test_module_named_by_a_pytree_context_is_not_imported(clean, tmp_path, monkeypatch):
    """torch imports the module an `__enum__` treespec context names; `python -m` puts the cwd (where
    a model download may also hold a .py) on sys.path."""
    marker = tmp_path / "MARKER"
    (tmp_path / "pt2_evil_module.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")

    def edit(program):
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(signature["in_spec"])
        spec[1]["context"] = json.dumps({"__enum__": True, "fqn": "pt2_evil_module:E", "name": "A"})
        signature["in_spec"] = json.dumps(spec)
    model = _rewrite(clean, tmp_path / "model.pt2", {"models/model.json": _edit_json(edit)})
    result = _cli("build", model, "-o", tmp_path / "out.so", cwd=tmp_path)
    _assert_refused(result, "member 'models/model.json' names a Python enum to import")
    assert not marker.exists(), "the module was imported"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pt2_evil_module", raising=False)
    _assert_armed(model, marker)


@pytest.mark.parametrize("case", ["not_a_zip", "truncated_zip", "foreign_zip", "missing_member"])
def test_broken_archive_is_one_line(clean, tmp_path, case):
    model = tmp_path / "model.pt2"
    if case == "not_a_zip":
        model.write_text("hello, I am not a model\n")
    elif case == "truncated_zip":
        model.write_bytes(clean.read_bytes()[: clean.stat().st_size // 2])
    elif case == "foreign_zip":
        with zipfile.ZipFile(model, "w") as z:
            z.writestr("notes/readme.txt", "hello")
    else:
        with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(model, "w") as zout:
            for name in zin.namelist():
                if not name.endswith("models/model.json"):
                    zout.writestr(name, zin.read(name))
    result = _cli("build", model, "-o", tmp_path / "out.so", cwd=tmp_path)
    _assert_refused(result, "model.pt2: not a torch.export program (")
    assert not (tmp_path / "out.so").exists()


class _Dynamic(torch.nn.Module):
    def forward(self, x, y):
        z = torch.cat([x, y], 0)
        return z.reshape(-1, 2) * (z.shape[0] // 2), x.new_zeros(x.shape[0] * y.shape[0] + 3)


def test_clean_archive_loads_like_torch_export_load(clean, tmp_path, capfd):
    """Faithful: same tensors, graph and outputs as torch.export.load, also with a tensor the config marks
    as pickled (torch does so for tensor subclasses) and with symbolic shapes (sympy expressions)."""
    pickled, dynamic = tmp_path / "model.pt2", tmp_path / "dynamic.pt2"
    reference = torch.export.load(str(clean))
    torch.save(torch.nn.Parameter(reference.state_dict["conv.weight"].detach().clone()), tmp_path / "w.pt")
    _rewrite(clean, pickled, {"data/weights/model_weights_config.json": _mark_pickled("weight_0"),
                              "data/weights/weight_0": (tmp_path / "w.pt").read_bytes()})
    auto = torch.export.Dim.AUTO
    torch.export.save(torch.export.export(_Dynamic(), (torch.randn(4, 4), torch.randn(6, 4)),
                                          dynamic_shapes={"x": {0: auto}, "y": {0: auto}}), str(dynamic))
    for path, args in ((clean, (torch.randn(1, 1, 6, 6),)), (pickled, (torch.randn(1, 1, 6, 6),)),
                       (dynamic, (torch.randn(6, 4), torch.randn(4, 4)))):
        capfd.readouterr()
        got = load_program(path)
        assert capfd.readouterr() == ("", "")  # no torch logs or warnings
        want = torch.export.load(str(path))
        assert got.state_dict.keys() == want.state_dict.keys() and got.constants.keys() == want.constants.keys()
        for name, value in want.state_dict.items():
            assert torch.equal(got.state_dict[name], value), name
        assert str(got.graph) == str(want.graph) and str(got.range_constraints) == str(want.range_constraints)
        for g, w in zip(torch.utils._pytree.tree_leaves(got.module()(*args)),
                        torch.utils._pytree.tree_leaves(want.module()(*args)), strict=True):
            assert torch.equal(g, w)
    assert len(got.range_constraints) == 2  # the dynamic program's symbols were parsed
