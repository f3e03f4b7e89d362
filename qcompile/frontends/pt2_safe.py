"""Load a torch.export `.pt2` archive without running code from it.

`torch.export.load` unpickles weights, constants and sample inputs with `weights_only=False`, passes
symbolic shape expressions to `sympy.sympify` (which evaluates them as Python), imports any module a
pytree context names, and compiles the archive's guard code when the program is run: a crafted model
file runs arbitrary code. This reader parses the layout torch 2.13 writes (`<root>/archive_format`,
`models/model.json`, `data/weights|constants/model_*_config.json` plus one raw-bytes member per
storage) and takes tensors only: raw bytes, or `torch.load(weights_only=True)` for members the config
marks as pickled. Everything else is refused with one line naming the member. Sample inputs are not
needed to import a program and are never read; AOTInductor members are ignored.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import re
import warnings
import zipfile
from pathlib import Path

from ..errors import QCompileError, last_line

WEIGHTS, CONSTANTS, MODEL = "data/weights/", "data/constants/", "models/model.json"


def load_program(path):
    """The torch.export.ExportedProgram in a `.pt2` file, read with no unpickling of objects."""
    path = Path(path)
    try:
        with _quiet():
            return _load(path)
    except QCompileError:
        raise
    except Exception as err:  # noqa: BLE001 - zip, JSON and schema errors alike
        raise QCompileError(f"{path}: not a torch.export program ({last_line(err)})") from None


@contextlib.contextmanager
def _quiet():
    """torch logs and warns while deserializing; the user sees our one line instead."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


def _load(path: Path):
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:  # "File is not a zip file": last_line() drops lines that start "File "
        raise ValueError("not a zip archive") from None
    with zf:
        # Every member sits under one root folder (the saved file's stem); it holds `archive_format`.
        roots = [n[: -len("archive_format")] for n in zf.namelist() if n.endswith("/archive_format") and n.count("/") == 1]
        if len(roots) != 1:
            raise ValueError("no archive_format member")

        def read(member: str) -> bytes:
            try:
                return zf.read(roots[0] + member)
            except KeyError:
                raise ValueError(f"no member '{member}'") from None

        if read("archive_format") != b"pt2" or read("archive_version") != b"0":
            raise ValueError("unknown archive format or version")
        program = json.loads(read(MODEL))
        _check_json(path, program)
        weights = _tensors(path, read, WEIGHTS, "model_weights_config.json")
        constants = _tensors(path, read, CONSTANTS, "model_constants_config.json")
    ep = ExportedProgramDeserializer().deserialize(_dict_to_dataclass(schema.ExportedProgram, program),
                                                   weights, constants, None)
    ep._guards_code = []  # Python source that ep.module() would compile and run; only shape checks
    return ep


def _tensors(path: Path, read, directory: str, config_name: str) -> dict:
    import torch
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        _dict_to_dataclass,
        deserialize_scalar_type,
        deserialize_size,
        deserialize_storage_offset,
        deserialize_stride,
    )

    config = _dict_to_dataclass(schema.PayloadConfig, json.loads(read(directory + config_name)))
    storages, out = {}, {}
    for fqn, meta in config.config.items():
        member = directory + meta.path_name
        # custom_obj_N / opaque_obj_N constants are whole pickled Python objects
        if meta.use_pickle or not meta.path_name.startswith(("weight_", "tensor_")):
            out[fqn] = _pickled_tensor(path, member, read(member))
            continue
        tm = meta.tensor_meta
        if tm is None:
            raise ValueError(f"no tensor_meta for member '{member}'")
        dtype = deserialize_scalar_type(tm.dtype)
        if member not in storages:  # one raw storage may back several (aliasing) tensors
            data = read(member)
            storages[member] = (torch.frombuffer(bytearray(data), dtype=dtype) if data
                                else torch.zeros(deserialize_size(tm.sizes), dtype=dtype))
        tensor = torch.as_strided(storages[member], deserialize_size(tm.sizes), deserialize_stride(tm.strides),
                                  deserialize_storage_offset(tm.storage_offset))
        out[fqn] = torch.nn.Parameter(tensor, requires_grad=tm.requires_grad) if meta.is_param else tensor
    return out


def _pickled_tensor(path: Path, member: str, data: bytes):
    import torch

    try:
        tensor = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - the restricted unpickler refused it
        tensor = None
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        raise QCompileError(f"{path}: member '{member}' is not a plain tensor (a pickled object); "
                            "qcompile loads tensors only")
    return tensor


def _check_json(path: Path, obj) -> None:
    """Refuse the two places where torch's deserializer would evaluate text from models/model.json."""
    if isinstance(obj, dict):
        if "__enum__" in obj:  # a pytree context: torch imports the module it names
            raise QCompileError(f"{path}: member '{MODEL}' names a Python enum to import "
                                f"({str(obj.get('fqn'))[:80]!r}); qcompile imports nothing a model file names")
        if isinstance(obj.get("expr_str"), str):
            _check_expr(path, obj["expr_str"])
        for value in obj.values():
            _check_json(path, value)
    elif isinstance(obj, list):
        for value in obj:
            _check_json(path, value)
    elif isinstance(obj, str) and obj.lstrip().startswith(("{", "[")):
        try:  # treespecs and their contexts are JSON inside JSON strings
            inner = json.loads(obj)
        except ValueError:
            return
        _check_json(path, inner)


def _check_expr(path: Path, expr: str) -> None:
    """torch writes sympy's srepr, e.g. `FloorDiv(Symbol('s0', positive=True, integer=True), Integer(2))`:
    calls of sympy classes by bare name, numbers, short strings and operators. Nothing else can reach
    `sympify`'s eval: no attributes, subscripts, lambdas or other names (`__import__`, `eval`, ...)."""
    import sympy
    import torch.utils._sympy.functions as torch_sympy

    def allowed_name(name: str) -> bool:
        if re.fullmatch(r"[a-z]+\d+", name) or name in ("True", "False"):  # symbols: s0, u3, ...
            return True
        objs = [getattr(module, name, None) for module in (torch_sympy, sympy)]
        return any(isinstance(o, sympy.Basic) or (isinstance(o, type) and issubclass(o, sympy.Basic)) for o in objs)

    def allowed(node: ast.AST) -> bool:
        if isinstance(node, ast.Call):
            return isinstance(node.func, ast.Name)
        if isinstance(node, ast.Name):
            return allowed_name(node.id)
        if isinstance(node, ast.keyword):
            return node.arg is not None  # not **kwargs
        if isinstance(node, ast.Constant):  # strings: symbol names, Float('1.5'); no code in them
            value = node.value
            return isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"[\w.+-]{0,64}", value)
                                                       and "__" not in value)
        return isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.expr_context,
                                 ast.operator, ast.unaryop, ast.cmpop, ast.boolop))

    try:
        ok = len(expr) < 10_000 and all(allowed(n) for n in ast.walk(ast.parse(expr, mode="eval")))
    except SyntaxError:
        ok = False
    if not ok:
        raise QCompileError(f"{path}: member '{MODEL}' has a symbolic shape that is not a sympy expression "
                            f"({expr[:80]!r}); torch would evaluate it as Python")
