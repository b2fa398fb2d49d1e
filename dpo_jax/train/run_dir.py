"""The rules of a run directory: it holds one run, which a later command continues or replaces only when asked.

- A new run refuses an `out_dir` that holds a run (its `run_config.json`, checkpoints or metrics) unless
  `overwrite`; then the old run is moved aside to `<out_dir>.replaced-<time>` (never deleted) and the new one
  starts in an empty `out_dir`. A path that is a file, or that cannot be created, is refused too.
- A resume needs the run's `run_config.json` (intact, from this version) and at least one checkpoint: a run whose
  checkpoints are gone is an error, never a restart at step 0 over its metrics. It refuses options that change the
  training trajectory (anything but `run_config.RESUMABLE_FIELDS`) and data whose fingerprint changed, naming
  each difference; with `allow_changes` it applies them and appends them to `changes.jsonl`.
- Nothing is created before the inputs are validated (`check_*` only read; `create_new_run` and `record_resume`
  write), so a refused command leaves no run directory behind.
"""

from __future__ import annotations

import datetime
import json
import os

from dpo_jax.files import atomic_write_text
from dpo_jax.train.fingerprint import fingerprint_differences
from dpo_jax.train.outputs import METRICS_FILE, RUN_CONFIG_FILE, read_metrics, write_json
from dpo_jax.train.run_config import (FINGERPRINT_KEY, RESUMABLE_FIELDS, RunConfig, flat_fields, load_run_config,
                                      read_run_file)

__all__ = ["RunDirError", "CHANGES_FILE", "CHECKPOINTS_DIR", "OPTION_FLAGS", "checkpoint_steps", "describe_run",
           "holds_run", "check_new_run", "create_new_run", "check_resume", "check_resumed_data", "record_resume",
           "resume_command"]

CHANGES_FILE = "changes.jsonl"
CHECKPOINTS_DIR = "checkpoints"
# the command-line flag of a RunConfig field, for messages (fields without one are named by their path)
OPTION_FLAGS = {"data": "--data", "tokenizer": "--tokenizer", "chat_template": "--chat-template",
                "eval_data": "--eval-data", "eval_split": "--eval-split", "batch_size": "--batch-size",
                "seed": "--seed", "dim": "--dim", "depth": "--depth", "heads": "--heads",
                "max_seq_len": "--max-seq-len", "init_from": "--init-from", "model": "--model", "layout": "--layout",
                "row_len": "--row-len", "rows": "--rows", "quick": "--quick", "train.beta": "--beta",
                "train.loss_type": "--loss-type", "train.reduction": "--reduction", "train.divergence": "--divergence",
                "train.label_smoothing": "--label-smoothing", "train.precompute_ref": "--precompute-ref",
                "train.ref_sync_every": "--ref-sync-every", "train.ref_sync_alpha": "--ref-sync-alpha",
                "train.optimizer": "--optimizer", "train.learning_rate": "--lr", "train.warmup_steps": "--warmup-steps",
                "train.schedule": "--schedule", "train.weight_decay": "--weight-decay",
                "train.grad_accum": "--grad-accum", "train.grad_clip": "--grad-clip",
                "train.forward.logprob_head": "--logprob-head", "train.forward.head_chunk_size": "--head-chunk-size",
                "train.forward.score_positions": "--score-positions", "train.forward.remat": "--remat",
                "train.forward.compute_dtype": "--compute-dtype", "train.forward.attention": "--attention",
                "train.loss_weights": "--loss-weights", "train.ld_alpha": "--ld-alpha",
                "train.use_weighting": "--use-weighting", "train.logits_metrics": "--logits-metrics",
                "lora": "--lora-r/--lora-* (the LoRA config)", "init_adapter": "--init-adapter"}


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message says why and what to do."""


def checkpoint_steps(run_dir) -> list[int]:
    """The finished checkpoint steps in `run_dir/checkpoints` (orbax names a finished step folder by its number;
    unfinished saves carry a temporary suffix)."""
    folder = os.path.join(os.fspath(run_dir), CHECKPOINTS_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def holds_run(path) -> bool:
    path = os.fspath(path)
    return os.path.isdir(path) and (os.path.exists(os.path.join(path, RUN_CONFIG_FILE)) or bool(checkpoint_steps(path))
                                    or os.path.exists(os.path.join(path, METRICS_FILE)))


def describe_run(path) -> str:
    """"run_config.json, 4 checkpoints (the last at step 4), 4 logged steps": what a run directory holds."""
    parts = []
    if os.path.exists(os.path.join(path, RUN_CONFIG_FILE)):
        parts.append(RUN_CONFIG_FILE)
    steps = checkpoint_steps(path)
    if steps:
        parts.append(f"{len(steps)} checkpoint(s), the last at step {steps[-1]}")
    logged = read_metrics(path)
    if logged:
        parts.append(f"{len(logged)} logged step(s), the last {logged[-1]['step']}")
    return ", ".join(parts) or "nothing"


def resume_command(run_dir) -> str:
    import shlex

    return f"dpo-jax train --resume {shlex.quote(os.fspath(run_dir))}"


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_new_run(run_dir, *, overwrite: bool) -> None:
    """Refuse (reading only) a new run's directory that cannot be used: a file, a path under a file, or a run."""
    run_dir = os.fspath(run_dir)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"--out {run_dir} is not a directory (a file of that name exists); choose another --out")
    existing = _nearest_existing(run_dir)
    if not os.path.isdir(existing):
        raise RunDirError(f"--out {run_dir}: {existing} is a file, not a directory; choose another --out")
    if holds_run(run_dir) and not overwrite:
        raise RunDirError(f"--out {run_dir} holds a run ({describe_run(run_dir)}); continue it with "
                          f"`{resume_command(run_dir)}`, choose another --out, or pass --overwrite to replace it "
                          "(the old run is moved aside, not deleted)")


def create_new_run(config: RunConfig, fingerprint: dict, *, log=print) -> str:
    """Make the run directory (moving an old run aside when `overwrite`) and write its run_config.json."""
    run_dir = os.fspath(config.out_dir)
    if config.overwrite and holds_run(run_dir):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = f"{run_dir.rstrip(os.sep)}.replaced-{stamp}"
        os.rename(run_dir, aside)
        log(f"dpo-jax: --overwrite: the run that was in {run_dir} is now in {aside} (delete it when you no longer "
            "need it)")
    try:
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, RUN_CONFIG_FILE), {**config.to_dict(), FINGERPRINT_KEY: fingerprint})
    except OSError as err:
        raise RunDirError(f"cannot create the run directory {run_dir}: {err.strerror or err}; choose another --out")
    return run_dir


def _value(value):
    return json.dumps(value) if not isinstance(value, str) else value


def config_differences(stored: RunConfig, requested: RunConfig) -> list[tuple[str, object, object]]:
    """(field path, stored value, requested value) for every trajectory-changing field that differs."""
    old, new = flat_fields(stored), flat_fields(requested)
    return [(key, old[key], new[key]) for key in old if key not in RESUMABLE_FIELDS and old[key] != new[key]]


def check_resume(config: RunConfig) -> tuple[RunConfig, dict, list[str]]:
    """(the stored config, its fingerprint, the option changes) of a resume, refused when it cannot continue."""
    run_dir = os.fspath(config.out_dir)
    stored_file = read_run_file(run_dir)
    stored = load_run_config(run_dir)
    steps = checkpoint_steps(run_dir)
    if not steps:
        logged = read_metrics(run_dir)
        raise RunDirError(f"--resume {run_dir}: no checkpoint to resume from ({CHECKPOINTS_DIR}/ is empty or gone"
                          f"{f'; metrics.jsonl has {len(logged)} logged step(s)' if logged else ''}); nothing was "
                          f"changed. Start the run again with --out {run_dir} --overwrite (the old files are moved "
                          "aside)")
    if config.num_steps < steps[-1]:
        raise RunDirError(f"--resume {run_dir}: --steps {config.num_steps} is below the last checkpoint's step "
                          f"{steps[-1]}; give --steps {steps[-1]} or more")
    changes = [f"{OPTION_FLAGS.get(key, key)} {_value(new)} (the run has {_value(old)})"
               for key, old, new in config_differences(stored, config)]
    if changes and not config.allow_changes:
        raise RunDirError(f"--resume {run_dir}: option(s) differ from the run's and would change its training "
                          f"trajectory: {'; '.join(changes)}. Drop them to resume the run as it started, or pass "
                          f"--allow-changes to apply them (recorded in {CHANGES_FILE})")
    return stored, stored_file.get(FINGERPRINT_KEY) or {}, changes


def check_resumed_data(config: RunConfig, stored_fingerprint: dict, fingerprint: dict) -> list[str]:
    """The data changes of a resume (refused unless `allow_changes`). A run directory written before fingerprints
    were stored has none: its data cannot be compared (the caller says so)."""
    if not stored_fingerprint:
        return []
    changes = fingerprint_differences(stored_fingerprint, fingerprint)
    if changes and not config.allow_changes:
        raise RunDirError(f"--resume {config.out_dir}: the data differs from what the run trained on: "
                          f"{'; '.join(changes)}. Restore it to resume, or pass --allow-changes to train on "
                          f"the new data from here (recorded in {CHANGES_FILE})")
    return changes


def record_resume(config: RunConfig, fingerprint: dict, changes: list[str], *, step: int) -> None:
    """After a resume with accepted changes: append them to changes.jsonl and store the config now in force."""
    if not changes:
        return
    run_dir = os.fspath(config.out_dir)
    path = os.path.join(run_dir, CHANGES_FILE)
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "resumed_at_step": step,
              "changes": changes}
    previous = open(path).read() if os.path.exists(path) else ""
    atomic_write_text(path, previous + json.dumps(record) + "\n")
    write_json(os.path.join(run_dir, RUN_CONFIG_FILE), {**config.to_dict(), FINGERPRINT_KEY: fingerprint})
