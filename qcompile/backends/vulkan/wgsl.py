"""Vulkan through WGSL: a Relax module -> WGSL kernels (TVM's WebGPU codegen) + the plan that runs
them in order. The artifact (a zip: plan.json, one .wgsl per kernel, weights.npz) is loaded without
TVM by vulkan/runtime.py, which executes it with wgpu (WGSL -> SPIR-V by naga, on any Vulkan
driver: lavapipe on a CPU, the GPU's own driver on a device).

The pinned TVM wheel has no SPIR-V backend, so WGSL is the route to Vulkan here. TVM's Relax VM
cannot launch WebGPU kernels outside a browser; the plan replaces it: every `call_tir` of the
fused, scheduled module becomes one or more dispatches (kernel, buffers, workgroup grid), each
tensor a buffer planned once (intermediates share buffers once dead)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from ...atomic import atomic_file
from ...errors import QCompileError
from ...ir import const_value, is_const
from .int8 import WGSL_FUNCTIONS
from .runtime import FORMAT

_LAUNCH = re.compile(r'T\.launch_thread\("((?:blockIdx|threadIdx)\.[xyz])", (?:T\.int64\()?(\d+)')


_LAUNCH_CALL = re.compile(r'T\.call_ffi_kernel\("(\w+)"')


def kernels_of(func, name: str, target) -> list[dict]:
    """One scheduled PrimFunc -> its device kernels: WGSL source, entry, parameter order, grid."""
    import tvm
    from tvm.tirx.build import codegen_build, split_host_device_mods

    mod = tvm.IRModule({name: func.with_attr("global_symbol", name)})
    mod = tvm.tirx.transform.BindTarget(target)(mod)
    pipeline, _, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    host, devices = split_host_device_mods(pipeline(mod))
    launches = _LAUNCH_CALL.findall(host.script())  # the host's launch order is the dispatch order
    buffers = {p.name: i for i, p in enumerate(func.params)}
    if len(buffers) != len(func.params):  # kernels name their buffers after these: a clash would mis-bind
        raise QCompileError(f"vulkan: the parameters of {name} share names ({[p.name for p in func.params]})")
    kernels = []
    for device_target, device_mod in devices.items():
        device_mod = finalize_device()(device_mod)
        source = codegen_build(device_mod, device_target).inspect_source()
        for gv, kernel in device_mod.functions_items():
            params = []
            for p in kernel.params:
                base = p.name[:-4] if p.name.endswith("_ptr") else p.name
                if base not in buffers:
                    raise QCompileError(f"vulkan: kernel {gv.name_hint} of {name} takes '{p.name}', which is not a "
                                        "tensor of the function (a scalar, or a buffer between two of its kernels): "
                                        "not supported")
                params.append(buffers[base])
            extents = {tag: int(v) for tag, v in _LAUNCH.findall(kernel.script())}
            kernels.append({"entry": gv.name_hint, "wgsl": _one_kernel(source, gv.name_hint), "params": params,
                            "grid": [extents.get(f"blockIdx.{a}", 1) for a in "xyz"]})
    if sorted(launches) != sorted(k["entry"] for k in kernels):
        raise QCompileError(f"vulkan: {name} launches {launches}, its device module has "
                            f"{[k['entry'] for k in kernels]}")
    return sorted(kernels, key=lambda k: launches.index(k["entry"]))


def _one_kernel(source: str, entry: str) -> str:
    """The codegen prints every kernel of a module after a `// Function: NAME` header."""
    parts = re.split(r"^//-+\n|^// Function: .*\n", source, flags=re.M)
    for part in parts:
        if re.search(rf"\bfn {re.escape(entry)}\(", part):
            # WGSL reads `-2147483648i` as -(2147483648i), which overflows: TVM prints int32's minimum
            # (max pooling's initial value) that way
            kernel = re.sub(r"-2147483648i\b", "(-2147483647i - 1i)", part.strip()) + "\n"
            helpers = [src for name, src in WGSL_FUNCTIONS.items() if re.search(rf"\b{name}\(", kernel)]
            return "\n".join([*helpers, kernel])
    raise QCompileError(f"vulkan: no WGSL generated for kernel {entry}")


class _Planner:
    def __init__(self):
        self.tensors: list[dict] = []
        self.consts: dict[str, np.ndarray] = {}
        self.ids: dict = {}

    def tensor(self, shape, dtype, kind, **extra) -> int:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.tensors.append({"shape": [int(d) for d in shape], "dtype": dtype, "nbytes": nbytes, "kind": kind, **extra})
        return len(self.tensors) - 1

    def const(self, value: np.ndarray) -> int:
        key = f"c{len(self.consts)}"
        self.consts[key] = value
        return self.tensor(value.shape, str(value.dtype), "const", key=key)


def _shape_dtype(expr):
    ty = expr.ty
    return [int(d) for d in ty.shape.values], str(ty.dtype)


def plan_module(mod, target, input_names: list[str], output_names: list[str]):
    """(plan dict, shader sources, {const key: array}) for the scheduled module's `main`."""
    from tvm import relax

    planner = _Planner()
    main = mod["main"]
    for param, name in zip(main.params, input_names):
        shape, dtype = _shape_dtype(param)
        planner.ids[param] = planner.tensor(shape, dtype, "input", name=name)
    compiled: dict[str, list[dict]] = {}
    shaders: list[str] = []
    dispatches = []
    for block in main.body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            if isinstance(value, relax.Var):
                planner.ids[var] = planner.ids[value]
                continue
            if not (isinstance(value, relax.Call) and value.op.name == "relax.call_tir"):
                raise QCompileError(f"vulkan: binding {var.name_hint} is not a kernel call ({value.op if isinstance(value, relax.Call) else type(value).__name__}); "
                                    "the WGSL path runs static-shape kernel sequences only")
            gv = value.args[0]
            args = []
            for a in value.args[1].fields:
                if is_const(a):
                    args.append(planner.const(const_value(a)))
                else:
                    args.append(planner.ids[a])
            shape, dtype = _shape_dtype(var)
            out = planner.tensor(shape, dtype, "temp")
            planner.ids[var] = out
            args.append(out)
            if gv.name_hint not in compiled:
                compiled[gv.name_hint] = kernels_of(mod[gv], gv.name_hint, target)
                for k in compiled[gv.name_hint]:
                    shaders.append(k["wgsl"])
                    k["shader"] = len(shaders) - 1
            for k in compiled[gv.name_hint]:
                dispatches.append({"shader": k["shader"], "entry": k["entry"], "kernel": gv.name_hint,
                                   "bindings": [args[i] for i in k["params"]], "grid": k["grid"]})
    result = main.body.body
    outs = list(result.fields) if isinstance(result, relax.Tuple) else [result]
    outputs = []
    for expr, name in zip(outs, output_names):
        tid = planner.ids[expr]
        planner.tensors[tid]["kind"] = "output"
        outputs.append({"name": name, "tensor": tid})
    slots = _plan_slots(planner.tensors, dispatches)
    plan = {"format": FORMAT, "tensors": planner.tensors, "slots": slots, "shaders": len(shaders),
            "dispatches": dispatches,
            "inputs": [{"name": planner.tensors[planner.ids[p]]["name"], "tensor": planner.ids[p]} for p in main.params],
            "outputs": outputs}
    return plan, shaders, planner.consts


def _plan_slots(tensors: list[dict], dispatches: list[dict]) -> list[int]:
    """Intermediate tensors share buffers ("slots"): a slot is free again after its tensor's last read."""
    last = {}
    for i, d in enumerate(dispatches):
        for t in d["bindings"]:
            last[t] = i
    slots: list[int] = []
    free: list[int] = []
    for i, d in enumerate(dispatches):
        for t in d["bindings"]:
            info = tensors[t]
            if info["kind"] == "temp" and "slot" not in info:
                fits = [s for s in free if slots[s] >= info["nbytes"]]
                slot = min(fits, key=lambda s: slots[s]) if fits else None
                if slot is None:
                    slots.append(max(info["nbytes"], 4))
                    slot = len(slots) - 1
                else:
                    free.remove(slot)
                info["slot"] = slot
        for t in set(d["bindings"]):
            if last[t] == i and tensors[t]["kind"] == "temp":
                free.append(tensors[t]["slot"])
    return slots


def write_artifact(path: Path, plan: dict, shaders: list[str], consts: dict, metadata: dict) -> Path:
    """One zip: plan.json, kernels/NNN.wgsl, weights.npz, metadata.json; written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **consts)
    with atomic_file(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("plan.json", json.dumps(plan, indent=1))
            for i, src in enumerate(shaders):
                zf.writestr(f"kernels/{i:03d}.wgsl", src)
            zf.writestr("weights.npz", buf.getvalue())
            zf.writestr("metadata.json", json.dumps(metadata, indent=2, sort_keys=True))
    return Path(path)
