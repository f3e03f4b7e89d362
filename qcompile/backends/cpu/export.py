"""Export for the CPU and CUDA backends: the model shared library (native or cross-linked,
metadata embedded) and the deploy bundle (runtime libraries and runner beside it). Every file is written to a temporary name and renamed into place, so a failure never
leaves a partial artifact behind."""

from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

from ...artifact import CHECKSUM, metadata_source, seal_library
from ...atomic import atomic_dir, atomic_file, fresh_dir
from ...targets import TargetSpec
from ...toolchain import compiler, link_options
from .runtime import PARALLEL_SOURCE, runtime_dir

_OBJECTS = "_qcompile_objects"


def object_files(executable) -> tuple[list[str], dict]:
    """The object files of `executable`'s kernels (and packed imports), written by TVM once and
    kept beside the executable while it lives: a build links the same code twice (the library it
    verifies, then the artifact with the verification in its metadata), and writing the objects is
    LLVM's whole code generation again, where linking takes a fraction of a second."""
    kept = getattr(executable, _OBJECTS, None)
    if kept is not None:
        return kept
    folder = fresh_dir("objects")
    weakref.finalize(executable, shutil.rmtree, folder, ignore_errors=True)
    recorded = []
    executable.export_library(str(folder / "unlinked.so"), workspace_dir=str(folder),
                              fcompile=lambda _output, files, **kwargs: recorded.append((list(files), kwargs)))
    kept = recorded[0]
    try:
        setattr(executable, _OBJECTS, kept)
    except AttributeError:  # an executable that takes no attributes is written again next time
        pass
    return kept


def write_library(executable, spec: TargetSpec, output: Path, metadata: dict) -> Path:
    """The linked library at `output`, its metadata embedded and sealed with its checksum (see
    artifact.py); `metadata` gains the checksum too."""
    from tvm.support import cc as tvm_cc

    objects, kwargs = object_files(executable)
    work = fresh_dir("export")
    try:
        meta_src = work / "qcompile_metadata.cc"
        meta_src.write_text(metadata_source(metadata))
        fcompile = tvm_cc.cross_compiler(compiler(spec), options=link_options(spec, work), add_files=[str(meta_src), str(PARALLEL_SOURCE)])
        with atomic_file(output) as tmp:
            fcompile(str(tmp), list(objects), **kwargs)
            metadata[CHECKSUM] = seal_library(tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Path(output)


BUNDLE_README = """# {name}: qcompile deploy bundle for {target}

{description}

Files: `model.so` (the compiled model), `libtvm_runtime.so` and `libtvm_ffi.so` (TVM's runtime,
apache-tvm {tvm_version}, for {arch}), `qcompile_run` (runner), `model.json` (inputs and outputs).

Copy the folder to the device and run, with inputs as `.npy` files in this order:

    ./qcompile_run ./model.so OUT_DIR {input_files}

Outputs are written as `OUT_DIR/output_<i>.npy`: {output_names}. Add `--repeat 50` to print the
median latency. Nothing else needs to be installed: the runner finds the libraries beside itself.
"""


def write_bundle(spec: TargetSpec, artifact: Path, bundle: Path, metadata: dict) -> Path:
    runtime = runtime_dir(spec)
    with atomic_dir(bundle) as tmp:
        shutil.copy2(artifact, tmp / "model.so")
        for name in ("libtvm_runtime.so", "libtvm_ffi.so", "qcompile_run"):
            shutil.copy2(runtime / name, tmp / name)
        (tmp / "model.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        (tmp / "README.md").write_text(BUNDLE_README.format(
            name=Path(metadata["source"]).stem, target=spec.name, description=spec.description,
            tvm_version=metadata["tvm_version"], arch=spec.arch,
            input_files=" ".join(f"{t['name']}.npy" for t in metadata["inputs"]),
            output_names=", ".join(f"{i}: `{t['name']}`" for i, t in enumerate(metadata["outputs"])),
        ))
    return Path(bundle)

