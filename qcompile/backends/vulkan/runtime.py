"""Runs a qcompile WGSL artifact (written by backends/vulkan/wgsl.py) on a Vulkan device through
wgpu. Needs only numpy and wgpu: no TVM. Buffers, pipelines and bind groups are made once at load; a run writes the
inputs, records every dispatch in one command buffer, and reads the outputs back.

    model = VulkanModel("model.vkz")
    outputs = model.run({"image": x})        # {output name: array}
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "qcompile-wgsl/1"
MAX_GRID_X = 65535
_BINDING = re.compile(r"@group\(0\) @binding\((\d+)\) var<(storage, read_write|storage, read|uniform)>")


def open_device(adapter=None):
    """A wgpu device on the Vulkan adapter (the high-performance one), with its full limits."""
    import wgpu

    adapter = adapter or wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    limits = {k: adapter.limits[k] for k in ("max-storage-buffers-per-shader-stage", "max-storage-buffer-binding-size",
                                              "max-buffer-size", "max-compute-workgroup-storage-size",
                                              "max-compute-invocations-per-workgroup")}
    return adapter.request_device_sync(required_limits=limits)


class VulkanModel:
    def __init__(self, path, device=None):
        import wgpu

        self.path = Path(path)
        with zipfile.ZipFile(self.path) as zf:
            self.plan = json.loads(zf.read("plan.json"))
            if self.plan.get("format") != FORMAT:
                raise ValueError(f"{self.path}: not a {FORMAT} artifact")
            shaders = [zf.read(f"kernels/{i:03d}.wgsl").decode() for i in range(self.plan["shaders"])]
            weights = np.load(io.BytesIO(zf.read("weights.npz")))
            self.metadata = json.loads(zf.read("metadata.json")) if "metadata.json" in zf.namelist() else {}
        self.device = device or open_device()
        self._fence = None
        self.adapter_info = dict(self.device.adapter.info)
        usage = wgpu.BufferUsage
        rw = usage.STORAGE | usage.COPY_SRC | usage.COPY_DST
        slots = [self.device.create_buffer(size=_aligned(n), usage=rw) for n in self.plan["slots"]]
        self.buffers = []
        for t in self.plan["tensors"]:
            if t["kind"] == "const":
                data = np.ascontiguousarray(weights[t["key"]]).tobytes()
                buf = self.device.create_buffer(size=_aligned(len(data)), usage=rw)
                self.device.queue.write_buffer(buf, 0, data + b"\0" * (_aligned(len(data)) - len(data)))
            elif t["kind"] == "temp":
                buf = slots[t["slot"]]
            else:
                buf = self.device.create_buffer(size=_aligned(t["nbytes"]), usage=rw)
            self.buffers.append(buf)
        modules = [self.device.create_shader_module(code=src) for src in shaders]
        self.steps = []
        pipelines: dict = {}
        for d in self.plan["dispatches"]:
            key = (d["shader"], d["entry"])
            if key not in pipelines:
                layout = self._layout(shaders[d["shader"]])
                pipelines[key] = (layout, self.device.create_compute_pipeline(
                    layout=self.device.create_pipeline_layout(bind_group_layouts=[layout]),
                    compute={"module": modules[d["shader"]], "entry_point": d["entry"]}))
            layout, pipeline = pipelines[key]
            grid_x, grid_y, grid_z = d["grid"]
            x, z = (grid_x, 1) if grid_x <= MAX_GRID_X else (MAX_GRID_X, -(-grid_x // MAX_GRID_X))
            if grid_z != 1 and z != 1:
                raise ValueError(f"{self.path}: kernel {d['entry']} needs a grid the WGSL launch cannot express")
            pod = self.device.create_buffer_with_data(data=struct.pack("<4I", grid_x - 1, 0, 0, 0), usage=usage.UNIFORM)
            entries = [{"binding": i, "resource": {"buffer": self.buffers[t], "offset": 0,
                                                   "size": _aligned(self.plan["tensors"][t]["nbytes"])}}
                       for i, t in enumerate(d["bindings"])]
            entries.append({"binding": len(d["bindings"]), "resource": {"buffer": pod, "offset": 0, "size": 16}})
            group = self.device.create_bind_group(layout=layout, entries=entries)
            self.steps.append((pipeline, group, (x, grid_y, max(z, grid_z))))

    def _layout(self, wgsl: str):
        import wgpu

        kinds = {"storage, read": wgpu.BufferBindingType.read_only_storage,
                 "storage, read_write": wgpu.BufferBindingType.storage, "uniform": wgpu.BufferBindingType.uniform}
        entries = [{"binding": int(b), "visibility": wgpu.ShaderStage.COMPUTE, "buffer": {"type": kinds[k]}}
                   for b, k in _BINDING.findall(wgsl)]
        return self.device.create_bind_group_layout(entries=entries)

    def run(self, inputs: dict) -> dict:
        for spec in self.plan["inputs"]:
            t = self.plan["tensors"][spec["tensor"]]
            if spec["name"] not in inputs:
                raise ValueError(f"missing input '{spec['name']}'")
            x = np.asarray(inputs[spec["name"]], dtype=t["dtype"])
            x = np.ascontiguousarray(x).reshape(x.shape)  # ascontiguousarray alone makes a scalar 1-d
            if list(x.shape) != t["shape"]:
                raise ValueError(f"input '{spec['name']}' has shape {list(x.shape)}, expected {t['shape']}")
            self.device.queue.write_buffer(self.buffers[spec["tensor"]], 0, x.tobytes())
        self.dispatch()
        out = {}
        for spec in self.plan["outputs"]:
            t = self.plan["tensors"][spec["tensor"]]
            data = self.device.queue.read_buffer(self.buffers[spec["tensor"]], 0, _aligned(t["nbytes"]))
            out[spec["name"]] = np.frombuffer(bytes(data)[:t["nbytes"]], dtype=t["dtype"]).reshape(t["shape"]).copy()
        return out

    def dispatch(self, times: int = 1) -> None:
        """Every kernel once (`times` times over), in one command buffer (inputs as last written)."""
        encoder = self.device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        for _ in range(times):
            for pipeline, group, grid in self.steps:
                compute.set_pipeline(pipeline)
                compute.set_bind_group(0, group)
                compute.dispatch_workgroups(*grid)
        compute.end()
        self.device.queue.submit([encoder.finish()])

    def _wait(self) -> None:
        """Returns once the work submitted so far has run: a read waits for the queue before it (wgpu
        0.32's on_submitted_work_done_sync fails in its own bindings)."""
        if self._fence is None:
            import wgpu

            self._fence = self.device.create_buffer(size=4, usage=wgpu.BufferUsage.COPY_SRC)
        self.device.queue.read_buffer(self._fence, 0, 4)

    def time_us(self, min_ms: float = 10.0, repeat: int = 3) -> float:
        """Microseconds of one pass over the kernels: the median of `repeat` batches of passes, each
        batch at least `min_ms` long, one command buffer per batch, waited for on the device."""
        import time

        def batch(times: int) -> float:
            start = time.perf_counter()
            self.dispatch(times)
            self._wait()
            return time.perf_counter() - start

        times, elapsed = 1, batch(1)
        while elapsed * 1e3 < min_ms and times < 4096:
            times *= 4
            elapsed = batch(times)
        samples = [elapsed] + [batch(times) for _ in range(repeat - 1)]
        return sorted(samples)[len(samples) // 2] / times * 1e6


def _aligned(n: int) -> int:
    return max(4, (n + 3) // 4 * 4)
