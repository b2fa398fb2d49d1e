"""Outputs: the stdout table, FILE.json, FILE.md (markdown summary) and FILE.png (bar plot)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _num(value, fmt: str, scale: float = 1.0, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value * scale, fmt)


def table_rows(contenders: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, r in contenders.items():
        if r.get("error"):
            rows.append([name, "ERROR: " + r["error"].splitlines()[0][:100], "", "", "", "", "", ""])
            continue
        st = r["step_time_s"]
        rows.append([
            name,
            _num(r["tokens_per_s"], ",.0f"),
            _num(r["ratio_to_x_transformers"], ".2f", missing="-") + ("x" if r["ratio_to_x_transformers"] else ""),
            f"{st['median'] * 1e3:.1f} [{st['min'] * 1e3:.1f}, {st['max'] * 1e3:.1f}]",
            _num(r["compile_s"], ".1f"),
            _num(r["peak_mem_bytes"], ",.0f", 1 / 2**20),
            _num(r["achieved_flops_per_s"], ".2f", 1e-9),
            _num(r["mfu"], ".1%"),
        ])
    return rows


HEADER = ["contender", "scored tok/s", "vs x_transformers", "step ms median [min, max]", "compile s",
          "peak MiB", "GFLOP/s", "MFU"]


def format_table(contenders: dict[str, dict]) -> str:
    rows = [HEADER] + table_rows(contenders)
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(contenders: dict[str, dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table_rows(contenders)]
    return "\n".join(lines)


def format_sweep(sweep: dict) -> str:
    names = list(sweep["points"][0]["contenders"]) if sweep["points"] else []
    header = [sweep["sweep"]] + [f"{n} tok/s" for n in names] + [f"{n} peak MiB" for n in names]
    rows = [header]
    for point in sweep["points"]:
        cells = [str(point["value"])]
        for key, fmt, scale in (("tokens_per_s", ",.0f", 1.0), ("peak_mem_bytes", ",.0f", 1 / 2**20)):
            for name in names:
                result = point["contenders"][name]
                cells.append("ERROR" if result.get("error") else _num(result.get(key), fmt, scale))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)
    return text + (f"\nnote: {sweep['note']}" if sweep.get("note") else "")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_markdown(path: Path, payload: dict) -> None:
    config, info = payload["config"], payload.get("info", {})
    load = payload.get("loadavg", {})
    lines = [
        f"# DPO training-step benchmark: `{payload['preset']}` on {payload['device']}",
        "",
        f"Command: `{' '.join(payload['command'])}`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in payload["versions"].items()),
        "",
        f"Config: {', '.join(f'{k}={v}' for k, v in config.items())}",
        "",
        f"Load average (1, 5, 15 min) at start {load.get('start')}, at end {load.get('end')}.",
        "",
    ]
    if payload.get("contenders"):
        lines += [markdown_table(payload["contenders"]), ""]
        lines += [
            f"- Scored tokens per step (non-prompt, non-pad, chosen + rejected): {info.get('scored_tokens')}; "
            f"tokens/s counts only these.",
            f"- FLOPs/step = (6 N + 2 N) x {info.get('tokens_processed_per_forward')} processed positions "
            f"(2B x (N-1), padding included) + causal attention; N = {info.get('n_compute_params'):,} "
            f"non-embedding parameters including the output head.",
            f"- Device peak FLOP/s for MFU: {info.get('peak_flops') or 'unknown (MFU not reported)'}.",
            "- Peak memory: growth over the post-setup baseline during warm-up and timed steps "
            "(CPU: process RSS high-water mark; GPU: device allocator peak).",
            "- Each contender ran in its own subprocess, one after the other, with the same seed-built weights "
            "and batch; ratios from one run are more meaningful than absolute times on a shared machine.",
        ]
    for sweep in payload.get("sweeps", []):
        lines += ["", f"## Sweep: {sweep['sweep']}", "", "```", format_sweep(sweep), "```"]
    path.write_text("\n".join(lines) + "\n")


def write_png(path: Path, payload: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = payload.get("contenders") or {}
    if not contenders and payload.get("sweeps"):
        return _sweep_png(path, payload, plt)
    names = list(contenders)
    tps = [contenders[n].get("tokens_per_s") or 0.0 for n in names]
    mem = [(contenders[n].get("peak_mem_bytes") or 0) / 2**20 for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = ["tab:red" if contenders[n].get("error") else "tab:blue" for n in names]
    for ax, values, title in ((axes[0], tps, "scored tokens / s (higher is better)"),
                              (axes[1], mem, "peak memory growth, MiB (lower is better)")):
        ax.bar(names, values, color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
        for i, value in enumerate(values):
            ax.annotate(f"{value:,.0f}", (i, value), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"{payload['preset']} on {payload['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sweep_png(path: Path, payload: dict, plt) -> None:
    sweeps = payload["sweeps"]
    fig, axes = plt.subplots(len(sweeps), 2, figsize=(11, 4 * len(sweeps)), squeeze=False)
    for row, sweep in zip(axes, sweeps):
        values = [point["value"] for point in sweep["points"]]
        names = list(sweep["points"][0]["contenders"]) if sweep["points"] else []
        for ax, key, scale, title in ((row[0], "tokens_per_s", 1.0, "scored tokens / s"),
                                      (row[1], "peak_mem_bytes", 1 / 2**20, "peak memory growth, MiB")):
            for name in names:
                ys = [(point["contenders"][name].get(key) or float("nan")) * scale for point in sweep["points"]]
                ax.plot(values, ys, marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(sweep["sweep"])
            ax.set_title(title)
            ax.legend()
    fig.suptitle(f"sweeps on {payload['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(out: Path, payload: dict) -> list[Path]:
    out = Path(out)
    paths = [out, out.with_suffix(".md"), out.with_suffix(".png")]
    write_json(paths[0], payload)
    write_markdown(paths[1], payload)
    write_png(paths[2], payload)
    return paths
