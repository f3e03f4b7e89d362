"""What every frontend returns, and the checks they share."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import QCompileError


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(data: dict) -> "TensorInfo":
        return TensorInfo(data["name"], tuple(data["shape"]), data["dtype"])


@dataclass
class ImportedModel:
    mod: object  # tvm.IRModule with a float `main`
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    source: str
    format: str
    layer_names: list[str] = field(default_factory=list)  # source names of compute ops, in order
    frozen: dict = field(default_factory=dict)  # inputs frozen to constants (name -> array), not inputs any more


def raise_unsupported(source: str, unsupported_nodes, hint=None) -> None:
    """One error listing every unsupported op with the names of the nodes that use it.
    `unsupported_nodes` yields (op, node name) pairs, in model order; `hint(ops)` may add what to do."""
    unsupported: dict[str, list[str]] = {}
    for op, node in unsupported_nodes:
        unsupported.setdefault(op, []).append(node)
    if not unsupported:
        return
    parts = []
    for op, nodes in sorted(unsupported.items()):
        shown = ", ".join(nodes[:5]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > 5 else "")
        parts.append(f"{op} (nodes: {shown})")
    advice = hint(set(unsupported)) if hint is not None else None
    raise QCompileError(f"{source}: unsupported ops: " + "; ".join(parts) + (f" ({advice})" if advice else ""))


def resolve_shape(source: str, name: str, dims: list, given: dict[str, list[int]]) -> tuple[int, ...]:
    """A static shape for one input: the user's, else the model's with a leading dynamic batch set to 1."""
    if name in given:
        shape = tuple(int(d) for d in given[name])
        if len(shape) != len(dims):
            raise QCompileError(f"{source}: input '{name}' has rank {len(dims)}, --input-shape gives {len(shape)}")
        return shape
    resolved = []
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and dim > 0:
            resolved.append(dim)
        elif axis == 0:
            resolved.append(1)
        else:
            raise QCompileError(
                f"{source}: input '{name}' has a dynamic dimension at axis {axis}; "
                f"give its shape with --input-shape {name}:{','.join('N' if not isinstance(d, int) or d <= 0 else str(d) for d in dims)}"
            )
    return tuple(resolved)


def frozen_value(source: str, name: str, values, dims: list, dtype: str):
    """The value an input is frozen to (--input-value), shaped as the input: one number for a scalar
    or to fill the shape, else as many numbers as the static shape holds."""
    import numpy as np

    flat = np.asarray(values, dtype=np.float64).ravel()
    if any(not isinstance(d, int) or d < 1 for d in dims):
        if flat.size == 1 and not dims:
            return flat.astype(dtype).reshape(())
        raise QCompileError(f"{source}: --input-value {name}: the input's shape {dims} is not static")
    size = int(np.prod(dims)) if dims else 1
    if flat.size not in (1, size):
        raise QCompileError(f"{source}: --input-value {name}: {flat.size} values for an input of shape {list(dims)}")
    return np.broadcast_to(flat, (size,)).astype(dtype).reshape(dims)


def check_input_names(source: str, known: list[str], given: dict, flag: str = "--input-shape") -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise QCompileError(f"{source}: {flag} names unknown input(s) {unknown}; the model's inputs are {known}")


def output_infos(mod, names: list[str]) -> list[TensorInfo]:
    """Output signature from the imported Relax `main` (tuple or single tensor)."""
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    infos = []
    for i, sinfo in enumerate(fields):
        name = names[i] if i < len(names) else f"output_{i}"
        shape = tuple(int(d) for d in sinfo.shape.values) if sinfo.shape is not None else ()
        infos.append(TensorInfo(name, shape, str(sinfo.dtype)))
    return infos

