"""`python -m benchmarks`: JAX against PyTorch DPO training steps - throughput, memory and MFU, side by side.

    python -m benchmarks --preset cpu-small --out benchmarks/results/cpu-2core_cpu-small.json
    python -m benchmarks --quick                       # harness smoke test (tiny model, 2 repeats)
    python -m benchmarks --preset gpu-125m --contenders dpo_torch,dpo_jax
    python -m benchmarks --preset head-128k            # the loss head alone (torch_head, jax_head)
    python -m benchmarks --sweep seq                   # dpo_jax vs dpo_torch over sequence length
    python -m benchmarks --sweep vocab --out /tmp/vocab.json
    python -m benchmarks --suite gpu                   # the whole GPU suite in one command (docs/gpu.md)
    python -m benchmarks --suite gpu --dry-run         # every part of it at tiny shapes on CPU (CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.contenders import CONTENDERS
from benchmarks.harness import cpu_description, run_benchmark, run_sweep, versions
from benchmarks.presets import PRESETS, SWEEP_CONTENDERS, resolve
from benchmarks.report import format_sweep, format_table, write_all


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    parser.add_argument("--quick", action="store_true", help="smoke test: the `quick` preset (tiny, 2 repeats)")
    parser.add_argument("--contenders", help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    parser.add_argument("--dim", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--vocab", type=int, dest="num_tokens")
    parser.add_argument("--pairs", type=int)
    parser.add_argument("--prompt-len", type=int)
    parser.add_argument("--completion-len", type=int)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads in each torch worker")
    parser.add_argument("--peak-flops", type=float, help="device peak FLOP/s for MFU (needed on CPU)")
    parser.add_argument("--sweep", choices=("seq", "vocab"), help="scaling sweep for dpo_jax and dpo_torch")
    parser.add_argument("--out", type=Path, help="FILE.json; FILE.md and FILE.png are written beside it")
    suite = parser.add_argument_group("the GPU suite (docs/gpu.md)")
    suite.add_argument("--suite", choices=("gpu",), help="environment, parity, presets and sweep in one run")
    suite.add_argument("--dry-run", action="store_true", help="every part at tiny shapes, in-process, on CPU")
    suite.add_argument("--budget-s", type=float, default=480.0,
                       help="time budget of the whole suite in seconds (default 480: fits one H100/H200 call)")
    suite.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"),
                       help="where the JSON, the summary and the figures go (named by device)")
    suite.add_argument("--parts", help="comma-separated subset of the suite's parts (default: all)")
    suite.add_argument("--resume", type=Path, help="a previous suite JSON: keep what it measured, run the rest")
    return parser.parse_args(argv)


def run_suite(args, argv) -> int:
    import json

    from benchmarks.suite.plan import PART_NAMES, plan
    from benchmarks.suite.runner import Suite

    parts = tuple(args.parts.split(",")) if args.parts else PART_NAMES
    try:
        tasks = plan(parts, dry_run=args.dry_run)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if args.budget_s <= 0:
        print(f"--budget-s must be positive, got {args.budget_s}", file=sys.stderr)
        return 2
    resume = None
    if args.resume:
        try:
            resume = json.loads(args.resume.read_text())
        except (OSError, ValueError) as error:
            print(f"--resume {args.resume}: {error}", file=sys.stderr)
            return 2
    print(f"[suite] {len(tasks)} tasks, budget {args.budget_s:.0f} s, results in {args.out_dir}"
          + (" (dry run)" if args.dry_run else ""))
    suite = Suite(tasks, out_dir=args.out_dir, budget_s=args.budget_s, dry_run=args.dry_run, resume=resume,
                  command=[sys.executable, "-m", "benchmarks", *argv])
    payload = suite.run()
    for path in suite.paths().values():
        if path.exists():
            print(f"[suite] wrote {path}")
    parity = payload.get("parity")
    if parity is None:
        verdict = "not run"
    else:
        verdict = "ok" if parity.get("parity_ok") else f"NOT ok: {parity.get('failed') or parity.get('error')}"
    print(f"[suite] {payload['status']} in {payload['wall_s']:.0f} s; parity {verdict}")
    return 1 if parity is not None and not parity.get("parity_ok") else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.suite:
        return run_suite(args, argv)
    if args.dry_run:
        print("--dry-run belongs to --suite gpu", file=sys.stderr)
        return 2
    preset = "quick" if args.quick else args.preset
    overrides = {key: getattr(args, key) for key in
                 ("dim", "depth", "heads", "num_tokens", "pairs", "prompt_len", "completion_len", "dtype",
                  "repeats", "warmup", "seed", "torch_threads")}
    config, default_contenders = resolve(preset, **overrides)
    if args.sweep:
        default_contenders = SWEEP_CONTENDERS
    contenders = args.contenders.split(",") if args.contenders else list(default_contenders)
    unknown = [name for name in contenders if name not in CONTENDERS]
    if unknown:
        print(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}", file=sys.stderr)
        return 2

    payload = {"device": None, "preset": preset, "config": config.to_dict(),
               "command": [sys.executable, "-m", "benchmarks", *argv], "versions": versions(),
               "loadavg": {"start": os.getloadavg()}, "contenders": {}}
    print(f"[benchmarks] preset {preset}: {config.to_json()}")
    print(f"[benchmarks] load average at start: {payload['loadavg']['start']}")
    start = time.perf_counter()
    if args.sweep:
        sweep = run_sweep(args.sweep, config, contenders)
        payload["sweeps"] = [sweep]
        payload["device"] = cpu_description()
        print(format_sweep(sweep))
    else:
        results, device, info = run_benchmark(config, contenders, peak_override=args.peak_flops)
        payload.update(device=device, contenders=results, info=info)
        print()
        print(f"{preset} on {device}: scored tokens/step {info['scored_tokens']}, "
              f"FLOPs/step {results[contenders[0]]['flops_per_step']:.3e}")
        print(format_table(results))
    payload["loadavg"]["end"] = os.getloadavg()
    payload["wall_s"] = time.perf_counter() - start
    print(f"[benchmarks] load average at end: {payload['loadavg']['end']}; wall {payload['wall_s']:.0f} s")
    if args.out:
        for path in write_all(args.out, payload):
            print(f"[benchmarks] wrote {path}")
    failed = [name for name, result in payload["contenders"].items() if result.get("error")]
    return 1 if failed and len(failed) == len(payload["contenders"]) else 0


if __name__ == "__main__":
    sys.exit(main())
