"""torch.export frontend: a saved ExportedProgram (`torch.export.save`, .pt2) -> Relax.
Needs the optional extra: pip install 'qcompile[torch]'."""

from __future__ import annotations

from pathlib import Path

from ..errors import QCompileError, last_line
from .common import ImportedModel, TensorInfo, output_infos, raise_unsupported
from .pt2_safe import load_program

COMPUTE_TARGETS = ("convolution.", "conv1d.", "conv2d.", "linear.", "matmul.", "mm.", "addmm.", "bmm.", "conv_transpose2d.")


def load_exported_program(path: Path, input_shapes: dict[str, list[int]]) -> ImportedModel:
    try:
        import torch  # noqa: F401 - only to name the missing extra
    except ImportError:
        raise QCompileError(f"{path}: torch.export programs need PyTorch: pip install 'qcompile[torch]'") from None
    from tvm.relax.frontend.torch import from_exported_program
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    program = load_program(path)  # not torch.export.load: that unpickles (runs) code from the file
    program = program.run_decompositions()
    supported = ExportedProgramImporter().convert_map
    raise_unsupported(str(path), ((node.target.__name__, node.name) for node in program.graph.nodes
                                  if node.op == "call_function" and node.target.__name__ not in supported))
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    unknown = sorted(set(input_shapes or {}) - {n.name for n in placeholders})
    if unknown:
        raise QCompileError(f"{path}: --input-shape names {unknown}; the program's inputs are "
                            f"{[n.name for n in placeholders]}")
    inputs, symbols = [], {}
    for node in placeholders:
        val = node.meta["val"]
        shape = _concrete_shape(path, node.name, list(val.shape), (input_shapes or {}).get(node.name), symbols)
        inputs.append(TensorInfo(node.name, shape, str(val.dtype).removeprefix("torch.")))
    try:
        mod = from_exported_program(program, keep_params_as_input=False, unwrap_unit_return_tuple=True,
                                    run_ep_decomposition=False)
        if symbols:  # the program's dynamic dimensions, now the sizes given (or a batch of 1)
            from tvm import relax

            mod = relax.transform.BindSymbolicVars(symbols)(mod)
    except Exception as err:  # noqa: BLE001
        raise QCompileError(f"{path}: torch.export import failed: {last_line(err)}") from None
    outputs = output_infos(mod, list(program.graph_signature.user_outputs))
    layer_names = [n.name for n in program.graph.nodes
                   if n.op == "call_function" and n.target.__name__.startswith(COMPUTE_TARGETS)]
    return ImportedModel(mod, inputs, outputs, str(path), "torch.export", layer_names)


def _concrete_shape(path, name: str, dims: list, given, symbols: dict) -> tuple[int, ...]:
    """An input's shape with its dynamic dimensions (torch SymInts) set: from --input-shape, or a
    leading batch of 1; `symbols` collects symbol -> size for BindSymbolicVars."""
    if given is not None and len(given) != len(dims):
        raise QCompileError(f"{path}: --input-shape {name} has {len(given)} dimensions; the input has {len(dims)}")
    shape = []
    for i, d in enumerate(dims):
        if isinstance(d, int):
            if given is not None and int(given[i]) != d:
                raise QCompileError(f"{path}: input '{name}' dimension {i} is fixed at {d} in the program, "
                                    f"not {given[i]}; re-export it with that dimension dynamic")
            shape.append(d)
            continue
        symbol = str(d)
        if not symbol.isidentifier():
            raise QCompileError(f"{path}: input '{name}' dimension {i} is the expression '{symbol}'; "
                                "qcompile binds dynamic dimensions that are plain symbols")
        size = int(given[i]) if given is not None else 1 if i == 0 else None
        if size is None:
            raise QCompileError(f"{path}: input '{name}' dimension {i} is dynamic; give it with --input-shape")
        if symbols.get(symbol, size) != size:
            raise QCompileError(f"{path}: input '{name}' dimension {i} is '{symbol}', already set to "
                                f"{symbols[symbol]}, not {size}")
        symbols[symbol] = size
        shape.append(size)
    return tuple(shape)
