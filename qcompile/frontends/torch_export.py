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
    if input_shapes:
        raise QCompileError(f"{path}: a torch.export program has fixed shapes; re-export it instead of --input-shape")
    program = program.run_decompositions()
    supported = ExportedProgramImporter().convert_map
    raise_unsupported(str(path), ((node.target.__name__, node.name) for node in program.graph.nodes
                                  if node.op == "call_function" and node.target.__name__ not in supported))
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta["val"]
            inputs.append(TensorInfo(node.name, tuple(int(d) for d in val.shape), str(val.dtype).removeprefix("torch.")))
    try:
        mod = from_exported_program(program, keep_params_as_input=False, unwrap_unit_return_tuple=True,
                                    run_ep_decomposition=False)
    except Exception as err:  # noqa: BLE001
        raise QCompileError(f"{path}: torch.export import failed: {last_line(err)}") from None
    outputs = output_infos(mod, list(program.graph_signature.user_outputs))
    layer_names = [n.name for n in program.graph.nodes
                   if n.op == "call_function" and n.target.__name__.startswith(COMPUTE_TARGETS)]
    return ImportedModel(mod, inputs, outputs, str(path), "torch.export", layer_names)
