"""Per-layer tables of a Relax module: which compute op, under which name, in which precision."""

from __future__ import annotations

COMPUTE_OPS = {
    "relax.nn.conv2d": "conv2d", "relax.nn.conv1d": "conv1d", "relax.matmul": "matmul",
    "relax.linear": "dense", "relax.nn.dense": "dense", "relax.nn.conv2d_transpose": "conv2d_transpose",
}


def layer_table(mod, source_names: list[str] | None = None, func_name: str = "main") -> list[dict]:
    """One row per compute op in `func_name`, in program order: its name in the source model
    (when the frontend's list matches one to one, else op and index), op and dtypes."""

    rows = []

    def visit(binding):
        value = binding.value
        op_name = getattr(getattr(value, "op", None), "name", None)
        if op_name in COMPUTE_OPS:
            args = [a for a in value.args if hasattr(a, "ty") and hasattr(a.ty, "dtype")]
            rows.append({
                "name": f"{COMPUTE_OPS[op_name]}_{len(rows)}",
                "op": COMPUTE_OPS[op_name],
                "input_dtype": str(args[0].ty.dtype) if args else "",
                "weight_dtype": str(args[1].ty.dtype) if len(args) > 1 else "",
                "output_dtype": str(binding.var.ty.dtype) if hasattr(binding.var.ty, "dtype") else "",
            })

    for block in mod[func_name].body.blocks:
        for binding in block.bindings:
            visit(binding)
    if source_names and len(source_names) == len(rows):
        for row, name in zip(rows, source_names):
            row["name"] = name
    return rows
