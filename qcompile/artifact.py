"""Artifact metadata: a JSON record embedded in the shared library itself, so `inspect` and `run`
work on a copied .so with nothing beside it."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import QCompileError

MARKER = b"QCOMPILE_METADATA_V1:"


def metadata_source(metadata: dict) -> str:
    """C++ source of a byte array holding MARKER + JSON + NUL, linked into the artifact."""
    payload = MARKER + json.dumps(metadata, sort_keys=True).encode() + b"\0"
    body = ",".join(str(b) for b in payload)
    return (
        'extern "C" __attribute__((visibility("default"), used))\n'
        f"const unsigned char qcompile_metadata[{len(payload)}] = {{{body}}};\n"
    )


def read_metadata(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise QCompileError(f"{path}: no such artifact")
    data = path.read_bytes()
    if data[:4] == b"PK\x03\x04":
        return _zip_metadata(path)
    if data[:4] != b"\x7fELF":
        raise QCompileError(f"{path}: not a shared library (no ELF header)")
    start = data.find(MARKER)
    if start < 0:
        raise QCompileError(f"{path}: not a qcompile artifact (no embedded metadata)")
    start += len(MARKER)
    try:
        return json.loads(data[start : data.index(b"\0", start)])
    except (ValueError, json.JSONDecodeError):
        raise QCompileError(f"{path}: its embedded metadata is corrupt") from None


def _zip_metadata(path: Path) -> dict:
    """A Vulkan (WGSL) artifact is a zip whose metadata.json is the same record."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("metadata.json"))
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        raise QCompileError(f"{path}: not a qcompile artifact (a zip without valid metadata.json)") from None
