"""Per-layer tables of a Relax module: which compute op, under which name, in which precision."""

from __future__ import annotations

from .ops import INT4_MATMUL_KERNEL, LAYER_OPS


def _compute_bindings(mod, func_name: str = "main"):
    for block in mod[func_name].body.blocks:
        for binding in block.bindings:
            op_name = getattr(getattr(binding.value, "op", None), "name", None)
            if op_name in LAYER_OPS:
                yield binding, LAYER_OPS[op_name]
            elif op_name == "relax.call_tir" and is_int4_matmul(binding.value):
                yield binding, "matmul"


def is_int4_matmul(call) -> bool:
    """A call_tir of the int4 block-wise matmul kernel (its PrimFunc's name starts with the kernel's)."""
    return str(getattr(call.args[0], "name_hint", "")).startswith(INT4_MATMUL_KERNEL)


def compute_layer_names(mod, source_names: list[str] | None = None, func_name: str = "main") -> dict:
    """Binding var -> layer name for every compute op: its name in the source model when the
    frontend's list matches the ops one to one, else op and index."""
    bindings = list(_compute_bindings(mod, func_name))
    use_source = bool(source_names) and len(source_names) == len(bindings)
    return {b.var: (source_names[i] if use_source else f"{op}_{i}") for i, (b, op) in enumerate(bindings)}


def layer_table(mod, source_names: list[str] | None = None, func_name: str = "main") -> list[dict]:
    """One row per compute op in `func_name`, in program order: name, op and dtypes."""
    names = compute_layer_names(mod, source_names, func_name)
    rows = []
    for binding, op in _compute_bindings(mod, func_name):
        value = binding.value
        if is_int4_matmul(value):  # call_tir(kernel, (x, codes, scales))
            x = value.args[1].fields[0]
            rows.append({"name": names[binding.var], "op": op, "input_dtype": str(x.ty.dtype),
                         "weight_dtype": "int4", "output_dtype": str(binding.var.ty.dtype)})
            continue
        args = [a for a in value.args if hasattr(a, "ty") and hasattr(a.ty, "dtype")]
        rows.append({
            "name": names[binding.var],
            "op": op,
            "input_dtype": str(args[0].ty.dtype) if args else "",
            "weight_dtype": str(args[1].ty.dtype) if len(args) > 1 else "",
            "output_dtype": str(binding.var.ty.dtype) if hasattr(binding.var.ty, "dtype") else "",
        })
    return rows
