"""Devices at a TVM RPC tracker: where a board is, and whether one of its key is free."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from ...errors import QCompileError


@dataclass
class RPC:
    tracker: str  # HOST:PORT
    key: str
    timeout_s: int = 30

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.tracker.rpartition(":")
        if not host or not port.isdigit():
            raise QCompileError(f"--rpc-tracker '{self.tracker}': expected HOST:PORT (e.g. 127.0.0.1:9190)")
        return host, int(port)


def free_devices(rpc: RPC) -> int:
    from tvm import rpc as tvm_rpc

    host, port = rpc.host_port
    try:  # TVM's client retries a dead address for a minute, logging each try: ask once first
        socket.create_connection((host, port), timeout=5).close()
        summary = tvm_rpc.connect_tracker(host, port).summary()
    except Exception:  # noqa: BLE001
        raise QCompileError(f"--rpc-tracker {rpc.tracker}: no RPC tracker answers there") from None
    return summary.get("queue_info", {}).get(rpc.key, {}).get("free", 0)


def wait_for_device(rpc: RPC, resume_hint: str = "", wait_s: float = 0.0) -> None:
    """A one-line error unless a device of rpc.key is free, within wait_s: a server registers
    again only some seconds after its last session closed (tens of seconds under emulation)."""
    deadline = time.monotonic() + wait_s
    while not free_devices(rpc):
        if time.monotonic() >= deadline:
            raise QCompileError(f"--rpc-key {rpc.key}: no free device with this key at tracker {rpc.tracker}{resume_hint}")
        time.sleep(0.5)


def connect_within(rpc: RPC, wait_s: float):
    """A session on a device of rpc.key, waiting at most wait_s for one to be free: the tracker's own
    request waits for ever, so a run whose only device died would hang without a word."""
    from tvm import rpc as tvm_rpc

    wait_for_device(rpc, wait_s=wait_s)
    host, port = rpc.host_port
    return tvm_rpc.connect_tracker(host, port).request(rpc.key, session_timeout=rpc.timeout_s * 4)


_device_gone = False  # in an RPCRunner worker: its last wait for a device timed out


def create_session(rpc_config):
    """MetaSchedule's RPCRunner session factory (runs in its worker) with the wait bounded by the
    session timeout: a trial whose device is gone fails, and the run stops with one line. Once a
    wait has timed out, the following trials look once and fail at once, so a batch of trials
    costs one timeout, not one each."""
    global _device_gone
    rpc = RPC(f"{rpc_config.tracker_host}:{rpc_config.tracker_port}", rpc_config.tracker_key,
              int(rpc_config.session_timeout_sec))
    try:
        wait_for_device(rpc, wait_s=0.0 if _device_gone else rpc_config.session_timeout_sec)
    except QCompileError:
        _device_gone = True
        raise
    _device_gone = False
    return rpc_config.connect_server()
