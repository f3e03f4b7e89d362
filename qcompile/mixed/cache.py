"""The search's cache: one JSON file per (model, target, calibration settings), so sensitivities
and latencies survive reruns."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_file


class Cache:
    """One JSON file per (model, target, calibration settings): sensitivities and latencies survive reruns."""

    def __init__(self, folder: Path | None, key: str):
        self.path = None if folder is None else Path(folder) / f"{key}.json"
        self.data = {}
        if self.path is not None and self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError:
                self.data = {}

    def get(self, section: str, compute):
        if section not in self.data:
            self.data[section] = compute()
            self.save()
        return self.data[section]

    def save(self):
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            Path(tmp).write_text(json.dumps(self.data))


# Bumped when the tables' contents change meaning (2: int4w joined the precisions), so older caches are not read
CACHE_VERSION = b"2"


def cache_key(model, spec, calib_batches, labels, base) -> str:
    h = hashlib.sha256(CACHE_VERSION)
    h.update(Path(model).read_bytes() if Path(str(model)).is_file() else str(model).encode())
    h.update(spec.name.encode())
    for b in calib_batches:
        for k in sorted(b):
            h.update(np.ascontiguousarray(b[k]).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    h.update(json.dumps(base.describe(), sort_keys=True).encode())
    return h.hexdigest()[:16]
