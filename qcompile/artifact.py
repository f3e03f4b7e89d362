"""Artifact metadata: a JSON record embedded in the shared library itself, so `inspect` and `run`
work on a copied .so with nothing beside it.

The record also holds the library's checksum, `library_sha256`: the sha256 of the whole file with
the 64 hex digits of that field read as zeros. Export links the library with zeros there, hashes
the file and writes the digest over the zeros in place (same length: no other byte moves); `run`
recomputes it the same way and refuses a library that does not match before loading any of its
code (a flipped byte there could crash the process, e.g. by SIGILL)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import QCompileError

MARKER = b"QCOMPILE_METADATA_V1:"
CHECKSUM = "library_sha256"
_FIELD = f'"{CHECKSUM}": "'.encode()
_ZEROS = b"0" * 64
VULKAN_MEMBERS = ("plan.json", "weights.npz")  # beside metadata.json


def metadata_source(metadata: dict) -> str:
    """C++ source of a byte array holding MARKER + JSON + NUL, linked into the artifact (its
    checksum field zeros, for seal_library to fill in)."""
    payload = MARKER + json.dumps({**metadata, CHECKSUM: _ZEROS.decode()}, sort_keys=True).encode() + b"\0"
    body = ",".join(str(b) for b in payload)
    return (
        'extern "C" __attribute__((visibility("default"), used))\n'
        f"const unsigned char qcompile_metadata[{len(payload)}] = {{{body}}};\n"
    )


def _checksum_at(data: bytes) -> int:
    """Offset of the checksum's hex digits in the library's bytes (-1 if it has no checksum field)."""
    start = data.find(MARKER)
    at = data.find(_FIELD, start, data.find(b"\0", start)) if start >= 0 else -1
    return at + len(_FIELD) if at >= 0 else -1


def _digest(data: bytes, at: int) -> str:
    return hashlib.sha256(data[:at] + _ZEROS + data[at + 64:]).hexdigest()


def seal_library(path) -> str:
    """Write the checksum into a library linked with metadata_source's record; returns it."""
    data = Path(path).read_bytes()
    at = _checksum_at(data)
    digest = _digest(data, at)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(digest.encode())
    return digest


def read_metadata(path, verify: bool = False) -> dict:
    """The artifact's metadata; with `verify`, a shared library must also match its checksum."""
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
        meta = json.loads(data[start : data.index(b"\0", start)])
    except (ValueError, json.JSONDecodeError):
        raise QCompileError(f"{path}: its embedded metadata is corrupt") from None
    if verify:
        at = _checksum_at(data)
        if at < 0:
            raise QCompileError(f"{path}: the library has no checksum (built by an older qcompile); rebuild it")
        if meta.get(CHECKSUM) != _digest(data, at):
            raise QCompileError(f"{path}: the library does not match its checksum (modified or corrupt); rebuild it")
    return meta


def _zip_metadata(path: Path) -> dict:
    """A Vulkan (WGSL) artifact is a zip whose metadata.json is the same record."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            meta, names = json.loads(zf.read("metadata.json")), zf.namelist()
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        raise QCompileError(f"{path}: not a qcompile artifact (a zip without valid metadata.json)") from None
    missing = [name for name in VULKAN_MEMBERS if name not in names]
    if missing:
        raise QCompileError(f"{path}: an incomplete Vulkan artifact: it lacks {', '.join(missing)}; rebuild it")
    return meta
