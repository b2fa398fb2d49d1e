"""Run the suite's tasks within a time budget, checkpointing every result as it comes.

Each task runs in a subprocess of its own (the environment reader, the parity check, one contender), as the
harness always does; `--dry-run` runs them in this process instead (tiny shapes on a CPU: process start-up
would be most of the time, and memory numbers mean nothing there). After every task the JSON and the one-page
summary are rewritten (atomically), and the figure of the part it belongs to, so a run cut off at any point
keeps all it measured. A task starts only if the budget has at least `min_task_s` left, and gets the rest of
the budget as its timeout; what could not start is listed as skipped, with the command that runs it later.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.harness import REPO_ROOT, finish, run_worker
from benchmarks.flops import compute_params, peak_flops, tokens_processed
from benchmarks.suite import summary
from benchmarks.suite.environment import device_label
from benchmarks.suite.plan import SWEEP_TOKENS, TINY_SWEEP_TOKENS, Task

RESERVE_S = 10  # left at the end of the budget for the last files
MIN_TASK_S = 30  # a contender needs at least this (process start, model build, compilation)
COMPILE_CACHE = "/tmp/dpo-jax-compile-cache"  # shared by the suite's JAX processes: XLA's autotuning results too


def slug(text: str) -> str:
    return "-".join("".join(ch.lower() if ch.isalnum() else " " for ch in text).split()) or "device"


def _subprocess_result(module: str, argument: str | None, timeout_s: float, env=None) -> dict:
    command = [sys.executable, "-m", module] + ([argument] if argument is not None else [])
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s (the suite's budget)"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": f"{module} exited with {done.returncode}: {(done.stderr or done.stdout)[-2000:]}"}


def _in_process_contender(name, config) -> dict:
    from benchmarks._worker import measure

    try:
        return measure(name, config)
    except Exception as error:  # as the worker does: a failing contender is a result
        traceback.print_exc()
        return {"contender": name, "error": f"{type(error).__name__}: {error}"[:2000]}


class Suite:
    def __init__(self, tasks, *, out_dir: Path, budget_s: float, dry_run: bool, command, resume: dict | None = None,
                 min_task_s: float | None = None, log=print):
        self.tasks, self.out_dir, self.budget_s, self.dry_run = list(tasks), Path(out_dir), budget_s, dry_run
        self.min_task_s = (0 if dry_run else MIN_TASK_S) if min_task_s is None else min_task_s
        self.log = log
        self.start = time.perf_counter()
        self.resumed = resume or {}
        self.payload = {"suite": "gpu", "dry_run": dry_run, "command": list(command), "budget_s": budget_s,
                        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "status": "running", "device": None, "environment": None, "parity": None, "presets": {},
                        "sweep": {"sweep": "seq", "tokens_per_step": TINY_SWEEP_TOKENS if dry_run else SWEEP_TOKENS,
                                  "points": {}},
                        "skipped": [], "timeline": []}
        self.prefix = None

    # ---- bookkeeping ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def paths(self) -> dict:
        base = self.out_dir / self.prefix
        parts = {"json": base.with_name(base.name + "_gpu-suite.json"), "md": base.with_name(base.name + "_gpu-suite.md")}
        for part in ("gpu-125m", "head-128k", "gpu-350m", "sweep-seq"):
            parts[part] = base.with_name(f"{base.name}_{part}.png")
        return parts

    def checkpoint(self, part: str | None = None) -> None:
        self.payload["wall_s"] = round(self.elapsed(), 1)
        paths = self.paths()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for key, text in (("json", json.dumps(self.payload, indent=2) + "\n"),
                          ("md", summary.markdown(self.payload, paths))):
            temporary = paths[key].with_suffix(paths[key].suffix + ".tmp")
            temporary.write_text(text)
            os.replace(temporary, paths[key])
        if part in paths:
            try:
                summary.figure(self.payload, part, paths[part])
            except Exception as error:  # a figure is never worth losing the numbers for
                self.log(f"[suite] figure for {part} failed: {type(error).__name__}: {error}")

    def _done_before(self, task: Task):
        """A result of this task from the resumed run that needs no rerun (measured, not failed or skipped)."""
        if not self.resumed:
            return None
        if task.part == "parity":
            parity = self.resumed.get("parity")
            return parity if parity and parity.get("parity_ok") and not parity.get("error") else None
        if task.part == "sweep-seq":
            point = self.resumed.get("sweep", {}).get("points", {}).get(str(task.point), {})
            result = point.get("contenders", {}).get(task.contender)
        else:
            result = self.resumed.get("presets", {}).get(task.part, {}).get("contenders", {}).get(task.contender)
        return result if result and not result.get("error") and not result.get("skipped") else None

    # ---- running -------------------------------------------------------------------------------------

    def run(self) -> dict:
        if self.dry_run:
            self.share_compilations()
        for task in self.tasks:
            previous = self._done_before(task) if task.part != "environment" else None
            if previous is not None:
                self.store(task, dict(previous, resumed=True))
                self.log(f"[suite] {task.key}: kept from the resumed run")
                continue
            left = self.remaining() - RESERVE_S
            if left < self.min_task_s and task.part != "environment":  # the machine is always described
                self.payload["skipped"].append({"task": task.key, "reason": f"budget: {max(left, 0):.0f} s left"})
                self.log(f"[suite] {task.key}: skipped (budget: {max(left, 0):.0f} s left)")
                if self.prefix:
                    self.checkpoint()
                continue
            began = self.elapsed()
            result = self.execute(task, timeout_s=max(left, 60))
            self.store(task, result)
            status = "error" if result.get("error") else ("skipped" if result.get("skipped") else "ok")
            self.payload["timeline"].append({"task": task.key, "start_s": round(began, 1),
                                             "wall_s": round(self.elapsed() - began, 1), "status": status})
            self.log(f"[suite {self.elapsed():.0f}s] {task.key}: {self.describe(result)}")
            if task.part == "environment" and not self.dry_run and not self.has_gpu():
                raise SystemExit("no GPU found (neither jax nor torch sees one): `--suite gpu` measures GPUs; "
                                 "`--suite gpu --dry-run` rehearses every part on this CPU")
            self.checkpoint(task.part)
        skipped = [s for s in self.payload["skipped"] if s["reason"].startswith("budget")]
        self.payload["status"] = "cut by the time budget" if skipped else "complete"
        self.checkpoint()
        for part in ("gpu-125m", "head-128k", "gpu-350m", "sweep-seq"):
            self.checkpoint(part)
        return self.payload

    @staticmethod
    def share_compilations() -> None:
        """In-process rehearsal: identical XLA programs (on CPU "auto" compiles exactly what "xla" does) are
        compiled once, through JAX's persistent compilation cache in a temporary folder."""
        import tempfile

        import jax
        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="dpo-jax-dry-run-cache-"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    def has_gpu(self) -> bool:
        environment = self.payload["environment"] or {}
        return bool((environment.get("torch") or {}).get("cuda")) or \
            (environment.get("jax") or {}).get("backend") == "gpu"

    def execute(self, task: Task, *, timeout_s: float) -> dict:
        if task.part == "environment":
            if self.dry_run:
                from benchmarks.suite.environment import describe
                return describe()
            return _subprocess_result("benchmarks.suite.environment", None, timeout_s)
        if task.part == "parity":
            if self.dry_run:
                from benchmarks.suite import parity
                return parity.run(task.config)
            return _subprocess_result("benchmarks.suite.parity", json.dumps(task.config), timeout_s)
        reason = self.not_applicable(task.contender)
        if reason is not None:
            return {"contender": task.contender, "skipped": reason}
        if self.dry_run:
            return _in_process_contender(task.contender, task.config)
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", COMPILE_CACHE)
        result = run_worker(task.contender, task.config, timeout_s=timeout_s)
        if result.get("error", "").startswith("timed out"):
            result["error"] += " (the suite's budget)"
        return result

    def not_applicable(self, contender: str) -> str | None:
        if contender in ("liger_dpo", "liger_head"):
            from benchmarks.contenders.liger_steps import available
            return available()
        if contender == "dpo_torch_lora":
            from benchmarks.contenders.lora_steps import peft_available
            return peft_available()
        return None

    def store(self, task: Task, result: dict) -> None:
        if task.part == "environment":
            self.payload["environment"] = result
            label = device_label(result) if not result.get("error") else "unknown-device"
            self.payload["device"] = label
            self.prefix = slug(label) + ("_dry-run" if self.dry_run else "")
            return
        if task.part == "parity":
            self.payload["parity"] = result
            return
        if task.part == "sweep-seq":
            point = self.payload["sweep"]["points"].setdefault(str(task.point), {
                "value": task.point, "config": task.config.to_dict(), "contenders": {}})
            point["contenders"][task.contender] = result
            return
        preset = self.payload["presets"].setdefault(task.part, {"config": task.config.to_dict(), "contenders": {}})
        preset["contenders"][task.contender] = result
        self.finish_preset(task.part, task.config)

    def finish_preset(self, part: str, config) -> None:
        """FLOPs, MFU and ratios for the measured contenders of a preset (the harness's own accounting)."""
        preset = self.payload["presets"][part]
        measured = {name: r for name, r in preset["contenders"].items() if not r.get("skipped")}
        device = self.payload.get("device") or "cpu"
        peak = peak_flops(device, config.dtype)
        finish(measured, config, device=device, peak=peak)
        preset["info"] = {"peak_flops": peak, "n_compute_params": compute_params(config),
                          "tokens_processed_per_forward": tokens_processed(config),
                          "scored_tokens": next((r.get("scored_tokens") for r in measured.values()
                                                 if r.get("scored_tokens")), None)}

    @staticmethod
    def describe(result: dict) -> str:
        if result.get("skipped"):
            return f"skipped: {result['skipped']}"
        if result.get("error"):
            return f"ERROR {result['error'].splitlines()[0][:200]}"
        if "tokens_per_s" in result:
            return (f"{result['tokens_per_s']:,.0f} scored tok/s, median "
                    f"{result['step_time_s']['median'] * 1e3:.1f} ms, compile {result['compile_s']:.1f} s")
        if "parity_ok" in result:
            return "parity ok" if result["parity_ok"] else f"parity FAILED: {result['failed']}"
        return "done"
