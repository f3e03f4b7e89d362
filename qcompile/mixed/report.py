"""What the bit-width search chose, for a person: the configuration as JSON (read back by
--precision-config), a per-layer table in Markdown and the Pareto plot beside it."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_file

COST_NOTE = {"latency": "latency: the layer's kernels at that precision, measured on this machine, less the "
                        "quantize/dequantize between two integer layers (charged on the edges between layers "
                        "where an integer and a float layer meet)",
             "size": "size: the layer's weight bytes at that precision"}
UNITS = {"latency": ("us", 1.0), "size": ("KB", 1e-3)}


def layer_table_md(result) -> str:
    unit, scale = UNITS[result.objective]
    precisions = ("int4", "int8", "int4w", "fp16")
    head = ("| layer | op | group | " + " | ".join(f"noise {p}" for p in precisions) + " | "
            + " | ".join(f"drop {p} (points)" for p in precisions) + " | "
            + " | ".join(f"{result.objective} {p} ({unit})" for p in (*precisions, "fp32")) + " | chosen |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in result.layers:
        noise = [f"{row['sensitivity'][p]['noise']:.2e}" if p in row["sensitivity"] else "-" for p in precisions]
        noise += [f"{row['sensitivity'][p]['drop']:.2f}" if p in row["sensitivity"] else "-" for p in precisions]
        cost = [f"{row[result.objective][p] * scale:.1f}" if p in row[result.objective] else "-"
                for p in (*precisions, "fp32")]
        rows.append(f"| {row['name']} | {row['op']} | {row['group']} | " + " | ".join(noise) + " | "
                    + " | ".join(cost) + f" | **{row['precision']}** |")
    return "\n".join(rows)


def checked_table_md(result) -> str:
    """The candidates that were built: precision counts, real drop, whole-model latency, the verdict."""
    timed = any("latency_us" in c for c in result.checked)
    rows = ["| built candidate | real drop (points) |" + (" latency (ms) |" if timed else "") + " |",
            "|---|---|" + ("---|" if timed else "") + "---|"]
    for c in result.checked:
        counts = {}
        for p in c["precisions"].values():
            counts[p] = counts.get(p, 0) + 1
        cells = [", ".join(f"{n} {p}" for p, n in sorted(counts.items())), f"{c['real_drop']:.2f}"]
        if timed:
            cells.append(f"{c['latency_us'] / 1e3:.3f}" if "latency_us" in c else "-")
        verdict = "**chosen**" if c["accepted"] else "over budget" if c["real_drop"] > result.max_drop else "slower"
        rows.append("| " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(rows)


def plot_pareto(result, path: Path, measured: list[dict] | None = None) -> None:
    """Candidates (predicted cost vs simulated drop of the metric), uniform int8 and fp32 marked,
    the chosen configuration circled; `measured`: built points (label, cost, drop) drawn too."""
    from matplotlib.figure import Figure

    unit, scale = UNITS[result.objective]
    fig = Figure(figsize=(6.4, 4.2))  # not pyplot: leaves the caller's backend alone
    ax = fig.subplots()
    pts = sorted((c["predicted_cost"] * scale, c["simulated_drop"]) for c in result.candidates)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:blue", label="ILP candidates (simulated)")
    for name, marker in (("int8", "s"), ("fp32", "^")):
        u = result.uniform.get(name)
        if u:
            ax.plot(u["predicted_cost"] * scale, u["simulated_drop"], marker, color="tab:red", ms=9, label=f"uniform {name}")
    chosen = next((c for c in result.candidates if c["precisions"] == result.precisions), None)
    if chosen:
        ax.plot(chosen["predicted_cost"] * scale, chosen["simulated_drop"], "o", mfc="none", mec="k", ms=14, label="chosen")
    for m in measured or []:
        ax.plot(m["cost"] * scale, m["drop"], "x", ms=9, color=m.get("color", "tab:green"), label=m["label"])
    ax.axhline(result.max_drop, ls="--", color="gray", lw=1, label=f"budget ({result.max_drop:g} points)")
    ax.set_xlabel(f"{result.objective} ({unit}, per-layer sum)" if result.objective == "latency" else f"weights ({unit})")
    ax.set_ylabel(f"drop of {result.metric} (points)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_mixed(result, config_path: Path) -> list[Path]:
    """The JSON configuration, its Markdown table and its plot, written beside each other."""
    config_path = Path(config_path)
    md, png = config_path.with_suffix(".md"), config_path.with_suffix(".png")
    with atomic_file(config_path) as tmp:
        Path(tmp).write_text(json.dumps(result.to_json(), indent=2))
    text = (f"# Per-layer precision ({result.objective}, at most {result.max_drop:g} points of {result.metric})\n\n"
            f"Float {result.metric}: {result.float_metric:.2f}%. Noise: relative output noise with only that layer "
            f"lowered; {COST_NOTE[result.objective]}.\n\n{layer_table_md(result)}\n\n![pareto]({png.name})\n\n"
            f"Built, with the real {result.metric} measured:\n\n{checked_table_md(result)}\n")
    with atomic_file(md) as tmp:
        Path(tmp).write_text(text)
    plot_pareto(result, png)
    return [config_path, md, png]
