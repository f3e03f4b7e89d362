"""Where CPU kernels and models are measured: this machine, or a board at an RPC tracker (kernels
cross-linked here, uploaded, run there). Both give MetaSchedule its builder and runner."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from ...atomic import fresh_dir
from ...errors import QCompileError, last_line
from ...targets import TargetSpec
from ...toolchain import compiler, link_options
from ..base import Device, time_us
from .rpc import RPC, connect_within, create_session


def build_kernel(mod, target, _params=None):
    """Builder worker: compile one scheduled kernel (the stock one imports the stock intrinsics)."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.compile(mod, target=target)


def export_kernel(spec_json: dict, folder: str | None, mod) -> str:
    """Builder worker: link with the target's toolchain (a cross compiler for a remote board), into a
    folder of its own under `folder` (MetaSchedule removes it once measured; the device removes
    `folder` when it closes, so an interrupted run leaves nothing either)."""
    from tvm.support import cc as tvm_cc

    spec = TargetSpec.from_json(spec_json)
    work = fresh_dir("tune")
    try:
        kernel_dir = Path(tempfile.mkdtemp(prefix="qcompile-tune-", dir=folder)) if folder else fresh_dir("kernel")
        path = str(kernel_dir / "kernel.so")
        mod.export_library(path, fcompile=tvm_cc.cross_compiler(compiler(spec), options=link_options(spec, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


class _CPUDevice(Device):
    def __init__(self, spec, target=None):
        self.spec = spec
        self.target = target
        self.workdir: Path | None = None  # the builder's kernels, for one run
        self._runner = None

    def builder(self):
        from tvm.s_tir import meta_schedule as ms

        if self.workdir is None:
            self.workdir = fresh_dir("tune")
        return ms.builder.LocalBuilder(f_build=build_kernel, max_workers=1, timeout_sec=120,
                                       f_export=functools.partial(export_kernel, self.spec.to_json(), str(self.workdir)))

    def runner(self):
        self._runner = self._make_runner()
        return self._runner

    def close(self) -> None:
        pool = getattr(self._runner, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False)  # its worker processes are killed, not left running
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _evaluator():
        from tvm.s_tir import meta_schedule as ms

        return ms.runner.EvaluatorConfig(number=5, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)

    def _run(self, module, dev, arrays, timed):
        import tvm

        tensors = [tvm.runtime.tensor(a, dev) for a in arrays]
        module["main"](*tensors)
        outputs = [t.numpy() for t in tensors]
        return outputs, time_us(module, dev, tensors) if timed else None

    @staticmethod
    def _model_us(vm, dev, arrays) -> float:
        import tvm

        return time_us(vm, dev, [tvm.runtime.tensor(a, dev) for a in arrays], number=1, repeat=5, min_repeat_ms=20)


class LocalDevice(_CPUDevice):
    """This machine's CPU."""

    def __init__(self, spec, target=None):
        import tvm

        super().__init__(spec, target)
        self.dev = tvm.cpu()

    def kernel(self, mod, arrays, timed=False):
        return self._run(build_kernel(mod, self.target).mod, self.dev, arrays, timed)

    def model_us(self, executable, arrays) -> float:
        """Median of 5 repeats of >= 20 ms."""
        from tvm import relax

        return self._model_us(relax.VirtualMachine(executable, self.dev), self.dev, arrays)

    def _make_runner(self):
        from tvm.s_tir import meta_schedule as ms

        return ms.runner.LocalRunner(evaluator_config=self._evaluator(), timeout_sec=60)


class RemoteDevice(_CPUDevice):
    """A board of rpc.key at the tracker; its session opens on the first measurement."""

    def __init__(self, spec, rpc: RPC, target=None):
        super().__init__(spec, target)
        self.rpc = rpc
        self._session = None
        self.uploads = 0

    @property
    def session(self):
        if self._session is None:
            try:
                self._session = connect_within(self.rpc, self.rpc.timeout_s)
            except QCompileError:
                raise
            except Exception as err:  # noqa: BLE001 - the tracker's errors become one line
                raise QCompileError(f"--rpc-key {self.rpc.key}: no device could be reached at {self.rpc.tracker} "
                                    f"({last_line(err)})") from None
        return self._session

    def _upload(self, module, stem: str):
        self.uploads += 1  # a fresh name each time: re-opening an overwritten library would crash the server
        name = f"{stem}_{self.uploads}.so"
        path = export_kernel(self.spec.to_json(), None, module)
        try:
            self.session.upload(path, target=name)
        finally:
            shutil.rmtree(Path(path).parent, ignore_errors=True)
        return self.session.load_module(name)

    def kernel(self, mod, arrays, timed=False):
        return self._run(self._upload(build_kernel(mod, self.target), "kernel"), self.session.cpu(), arrays, timed)

    def model_us(self, executable, arrays) -> float:
        """The model cross-linked here, uploaded, timed there."""
        from tvm import relax

        dev = self.session.cpu()
        return self._model_us(relax.VirtualMachine(self._upload(executable, "model"), dev), dev, arrays)

    def _make_runner(self):
        from tvm.s_tir import meta_schedule as ms

        host, port = self.rpc.host_port
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=self.rpc.key,
                                     session_timeout_sec=self.rpc.timeout_s)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=self._evaluator(), max_workers=1,
                                   f_create_session=create_session)

    def close(self) -> None:
        self._session = None
        super().close()
