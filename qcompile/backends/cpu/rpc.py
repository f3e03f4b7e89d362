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
