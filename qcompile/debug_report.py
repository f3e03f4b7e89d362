"""What `qcompile debug` measured, for a person: a table of the worst layers, the JSON and a plot
of each layer's SQNR alone and in the fully quantized model."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .atomic import atomic_file

COLUMNS = ("rank", "layer", "op", "alone dB", "full dB", "added dB", "cos alone", "cos full", "suggestion")


def db_text(value: float) -> str:
    """An SQNR for a person: one decimal, "inf" where the output equals float."""
    return "inf" if value == math.inf else f"{value:.1f}"


def layer_table(result, top: int = 10) -> str:
    """The `top` worst layers of a DebugResult: SQNR alone, in the full model against float and
    what the layer adds there, cosine similarities, and the suggestion."""
    rows = [(str(r["rank_alone"]), r["name"], r["op"], db_text(r["sqnr_alone_db"]), db_text(r["sqnr_full_db"]),
             db_text(r["sqnr_added_in_full_db"]), f"{r['cosine_alone']:.4f}", f"{r['cosine_full']:.4f}", r["suggestion"])
            for r in result.layers[:top]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS[:-1])]
    numeric = set(range(3, 8)) | {0}

    def line(cells):
        return "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))) + "  " + cells[-1]

    return "\n".join([line(COLUMNS), *map(line, rows)])


def write_json(result, path) -> None:
    with atomic_file(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(result.to_json(), indent=2))


def plot_layers(result, path) -> None:
    """Per-layer SQNR bars in program order: alone, and in the full model against float."""
    from matplotlib.figure import Figure

    rows = sorted(result.layers, key=lambda r: r["order"])
    capped = [[min(r[key], 80.0) for r in rows] for key in ("sqnr_alone_db", "sqnr_full_db")]  # inf drawn at 80
    fig = Figure(figsize=(max(6.4, 0.45 * len(rows) + 2), 4.2))  # not pyplot: leaves the caller's backend alone
    ax = fig.subplots()
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], capped[0], 0.4, label="only this layer quantized", color="tab:blue")
    ax.bar([x + 0.2 for x in xs], capped[1], 0.4, label="in the fully quantized model", color="tab:orange")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["name"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("SQNR against float (dB)")
    ax.set_title(f"per-layer quantization error ({result.samples} calibration samples)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
