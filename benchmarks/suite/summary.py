"""The suite's one-page summary (markdown) and its figures: what ran where, parity, each preset, the sweep.

Read it top down: the machine and versions; parity (every row must say ok); attention backends and bfloat16
drift (sizes of the rounding, not pass/fail, except a non-finite value); the cuDNN smoke test; each preset's
table (scored tokens/s, ratio to x-transformers or to torch_head, step time, compile, peak memory, MFU, and
the attention backend "auto" chose); the sweep; and what the budget left out, with the command that runs it.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import markdown_table



def _fmt(value, spec=".2e"):
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, spec) for v in value)
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def environment_lines(payload: dict) -> list[str]:
    environment = payload.get("environment") or {}
    smi = environment.get("nvidia_smi") or {}
    jax_info = environment.get("jax") or {}
    torch_info = environment.get("torch") or {}
    versions = environment.get("versions") or {}
    lines = [f"- Device: **{payload.get('device')}**"
             + (f", driver {smi.get('driver_version')}, {smi.get('memory.total')}, compute capability "
                f"{smi.get('compute_cap')}, SM clock {smi.get('clocks.sm')} (max {smi.get('clocks.max.sm')})"
                if smi and not smi.get("error") else ""),
             f"- JAX backend {jax_info.get('backend')} ({jax_info.get('kind')}, {jax_info.get('platform_version')}), "
             f"cuDNN {jax_info.get('cudnn', '-')}; torch CUDA {torch_info.get('torch_cuda')}, "
             f"cuDNN {torch_info.get('cudnn', '-')}",
             f"- Host CPU: {environment.get('cpu')}; load average at start {environment.get('loadavg')}",
             "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    return lines


def parity_lines(parity: dict | None) -> list[str]:
    if not parity:
        return ["(not run)"]
    if parity.get("error"):
        return [f"ERROR: {parity['error'].splitlines()[0]}"]
    lines = ["| check | value | tol | status |", "|---|---|---|---|"]
    for row in parity.get("parity", []):
        lines.append(f"| {row['check']} | {_fmt(row.get('value'))} | {_fmt(row.get('tol'))} | "
                     f"{row.get('status')}{': ' + row['error'][:120] if row.get('error') else ''} |")
    lines += ["", "Attention backends and bfloat16 drift against the float32 einsum oracle:", "",
              "| check | per-sequence log-prob (max rel) | loss (abs) | gradient (rel) | status |", "|---|---|---|---|---|"]
    for row in parity.get("drift", []):
        if "logits_rel_diff" in row:
            cells = (f"logits rel {_fmt(row['logits_rel_diff'])}", "-", "-")
        else:
            cells = (_fmt(row.get("logp_max_rel_diff")), _fmt(row.get("loss_abs_diff")), _fmt(row.get("grad_rel_diff")))
        detail = row.get("reason") or row.get("error") or ""
        lines.append(f"| {row['check']} | {' | '.join(cells)} | {row.get('status')}{': ' + detail[:120] if detail else ''} |")
    lines += ["", "cuDNN smoke test:", "", "| check | output (rel) | dq, dk, dv (rel) | status |", "|---|---|---|---|"]
    for row in parity.get("smoke", []):
        detail = row.get("reason") or row.get("error") or ""
        lines.append(f"| {row['check']} | {_fmt(row.get('out_rel_diff'))} | {_fmt(row.get('grad_rel_diff'))} | "
                     f"{row.get('status')}{': ' + detail[:160] if detail else ''} |")
    return lines


def _attention_of(result: dict) -> str:
    """The backends a contender's attention calls compiled with, e.g. "cudnn" or "xla" (from "auto")."""
    report = result.get("attention") or {}
    return ", ".join(sorted({line.split()[1].rstrip(":") for line in report if line.startswith("attention ")})) or "-"


def preset_title(name: str, config: dict) -> str:
    if config["kind"] == "head":
        shape = (f"the loss head alone, {2 * config['pairs']} rows x {config['completion_len'] + config['prompt_len']} "
                 f"tokens, hidden {config['dim']}, vocab {config['num_tokens']:,}")
    else:
        shape = (f"decoder dim {config['dim']} x {config['depth']} layers, {config['heads']} heads, vocab "
                 f"{config['num_tokens']:,}, {config['pairs']} pairs x {config['prompt_len']} + "
                 f"{config['completion_len']} tokens")
    return f"{name}: {shape}, {config['dtype']}"


def preset_lines(name: str, preset: dict) -> list[str]:
    contenders = preset.get("contenders", {})
    measured = {n: r for n, r in contenders.items() if not r.get("skipped")}
    lines = [f"### {preset_title(name, preset['config'])}", ""]
    if measured:
        lines += [markdown_table(measured), ""]
        info = preset.get("info", {})
        lines.append(f"FLOPs/step {_fmt(next(iter(measured.values())).get('flops_per_step'))}; peak "
                     f"{_fmt(info.get('peak_flops'))} FLOP/s for MFU; scored tokens/step {info.get('scored_tokens')}.")
        attention = {n: _attention_of(r) for n, r in measured.items() if r.get("attention")}
        if attention:
            lines.append("Attention backend compiled: " + "; ".join(f"{n}: {a}" for n, a in attention.items()) + ".")
    skipped = {n: r["skipped"] for n, r in contenders.items() if r.get("skipped")}
    if skipped:
        lines.append("Not applicable here: " + "; ".join(f"{n} ({why})" for n, why in skipped.items()) + ".")
    return lines + [""]


def sweep_rows(payload: dict) -> list[dict]:
    """Sweep points by length, with gpu-125m's own measurement at its length (same tokens per step)."""
    sweep = payload.get("sweep", {})
    points = {int(k): dict(v, contenders=dict(v["contenders"])) for k, v in sweep.get("points", {}).items()}
    preset = payload.get("presets", {}).get("gpu-125m")
    if preset and points:
        config = preset["config"]
        length = config["prompt_len"] + config["completion_len"]
        if config["pairs"] * length == sweep.get("tokens_per_step"):
            names = {name for point in points.values() for name in point["contenders"]}
            point = points.setdefault(length, {"value": length, "config": config, "contenders": {}})
            for name in names & set(preset["contenders"]):
                point["contenders"].setdefault(name, dict(preset["contenders"][name], from_preset="gpu-125m"))
    return [points[k] for k in sorted(points)]


def sweep_lines(payload: dict) -> list[str]:
    rows = sweep_rows(payload)
    if not rows:
        return ["(not run)"]
    names = sorted({name for row in rows for name in row["contenders"]})
    lines = ["| length (pairs) | " + " | ".join(f"{n} tok/s, peak MiB" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for row in rows:
        cells = []
        for name in names:
            result = row["contenders"].get(name)
            if result is None:
                cells.append("-")
            elif result.get("error") or result.get("skipped"):
                cells.append("ERROR: " + (result.get("error") or result.get("skipped")).splitlines()[0][:60])
            else:
                memory = result.get("peak_mem_bytes")
                cells.append(f"{result['tokens_per_s']:,.0f}, {memory / 2**20:,.0f}" if memory is not None
                             else f"{result['tokens_per_s']:,.0f}")
        lines.append(f"| {row['value']} ({row['config']['pairs']}) | " + " | ".join(cells) + " |")
    return lines


def markdown(payload: dict, paths: dict) -> str:
    kind = "dry run (tiny shapes on CPU: a rehearsal, no speed claim)" if payload.get("dry_run") else "GPU suite"
    lines = [f"# dpo-jax {kind} on {payload.get('device')}", "",
             f"Command: `{' '.join(payload['command'])}`; started {payload['started_at']}; status **{payload['status']}**; "
             f"wall {payload.get('wall_s')} s of a {payload['budget_s']:.0f} s budget.", ""]
    lines += ["## Machine", ""] + environment_lines(payload) + [""]
    lines += ["## Parity (float32, highest matmul precision, TF32 off) and drift", ""]
    lines += parity_lines(payload.get("parity")) + [""]
    lines += ["## Presets", ""]
    for name in ("gpu-125m", "head-128k", "gpu-350m"):
        if name in payload.get("presets", {}):
            lines += preset_lines(name, payload["presets"][name])
    lines += ["## Sequence-length sweep (gpu-125m model, constant tokens per step)", ""] + sweep_lines(payload) + [""]
    if payload.get("skipped"):
        keys = [s["task"] for s in payload["skipped"]]
        parts = sorted({key.split("/")[0].split("@")[0] for key in keys})
        lines += ["## Left out by the budget", "", ", ".join(keys), "",
                  f"Run them later: `python -m benchmarks --suite gpu --parts {','.join(parts)} --resume "
                  f"{Path(paths['json']).name}` (the JSON of this run, copied into benchmarks/results/).", ""]
    lines += ["## Files", "", ", ".join(Path(p).name for p in paths.values()), ""]
    return "\n".join(lines)


def figure(payload: dict, part: str, path: Path) -> None:
    """The part's figure: the harness's bar plot for a preset, its line plot for the sweep."""
    from benchmarks.report import write_png

    if part == "sweep-seq":
        rows = sweep_rows(payload)
        if not rows:
            return
        names = sorted({name for row in rows for name in row["contenders"]})
        points = [{"value": row["value"], "contenders": {n: row["contenders"].get(n, {}) for n in names}}
                  for row in rows]
        write_png(path, {"preset": "sweep-seq", "device": payload.get("device"), "contenders": {},
                         "sweeps": [{"sweep": "seq", "points": points}]})
        return
    preset = payload.get("presets", {}).get(part)
    if not preset:
        return
    measured = {n: r for n, r in preset["contenders"].items() if not r.get("skipped")}
    if measured:
        write_png(path, {"preset": part, "device": payload.get("device"), "contenders": measured})
