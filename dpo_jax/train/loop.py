"""`run(run_config)`: the whole DPO run - models, data, jitted step, logging, checkpoints, final files.

A run is resumable at any moment: batches are a pure function of (seed, step) (the layout's `get_batch`),
the TrainState (with its RNG) is checkpointed by orbax, and on resume metrics.jsonl is cut back to the
checkpoint's step, so the resumed run logs exactly what an uninterrupted run would have. A non-finite loss or
gradient norm stops the run (`NonFiniteError`) without saving: the last checkpoint stays the last good one.

The order is the contract of `train.run_dir`: options, the run directory's state, the data and the model are all
validated before the run directory, its run_config.json or a Checkpointer exist; once they do, every exit
(an error, a non-finite value, Ctrl-C) closes the Checkpointer. Ctrl-C stops after the step in flight, saves it
and raises `RunInterrupted` with the resume command's ingredients.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time

import jax
import numpy as np

from dpo_jax import sharding
from dpo_jax.layouts import layout_batches, validate_layout
from dpo_jax.ops.attention import attention_report, reset_attention_report
from dpo_jax.train import run_dir as run_dirs
from dpo_jax.train.checkpoint import Checkpointer
from dpo_jax.train.config import TrainConfig
from dpo_jax.train.evaluation import EVAL_METRICS, EVAL_PREFIX, Evaluator
from dpo_jax.train.fingerprint import run_fingerprint
from dpo_jax.train.interrupt import RunInterrupted, StopRequest
from dpo_jax.train.lora import FrozenBase, run_report
from dpo_jax.train.outputs import PLOT_FILE, SUMMARY_FILE, MetricsLog, plot_training, write_json
from dpo_jax.train.reference import ReferenceCache
from dpo_jax.train.run_config import RunConfig, load_run_config
from dpo_jax.train.run_data import check_eval_options
from dpo_jax.train.state import init_train_state, reference_params, trained_policy
from dpo_jax.train.step import make_train_step
from dpo_jax.train.task import Task, build_task

__all__ = ["LOGGED_METRICS", "NonFiniteError", "RunInterrupted", "RunConfig", "load_run_config", "run"]

LOGGED_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected", "grad_norm", "lr")
LOGGED_EVAL_METRICS = tuple(EVAL_PREFIX + name for name in EVAL_METRICS)
# logged too when the loss reports them: loss/<type> per term of a combination, nll_loss, logits/*
OPTIONAL_METRICS = ("loss/", "nll_loss", "logits/")


def _optional_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith(OPTIONAL_METRICS)}


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the update was refused and nothing was saved."""


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr)


def _check_eval(config: RunConfig, mesh) -> None:
    """Eval options that cannot work fail before any file is read or anything compiles."""
    check_eval_options(config.eval_data, config.eval_split, config.eval_every, config.eval_batch_size)
    if config.data is None and (config.eval_data is not None or config.eval_split is not None):
        raise ValueError("evaluation needs --data (the demo measures its policy by sampling instead)")
    if config.eval_data is not None or config.eval_split is not None:
        sharding.validate_batch(config.eval_batch_size or config.batch_size, mesh, 1, jax.process_count())


def _evaluator(config: RunConfig, task: Task, graphdef, train_config: TrainConfig, mesh) -> Evaluator | None:
    if not task.eval_examples:
        return None
    return Evaluator(graphdef, train_config, task.eval_examples, batch_size=config.eval_batch_size or config.batch_size,
                     max_len=task.max_len, pad_id=task.pad_id, mesh=mesh, process_index=jax.process_index(),
                     process_count=jax.process_count())


def _evaluate_if_due(evaluator, config: RunConfig, done: int, num_steps: int, state, cache) -> dict:
    """Eval metrics after step `done` when it is an eval step (every `eval_every`, and always the last), else {}."""
    if evaluator is None:
        return {}
    if done == num_steps or (config.eval_every and done % config.eval_every == 0):
        return evaluator.evaluate(state, cache)
    return {}


def _last_eval(records: list[dict]) -> dict:
    """The eval metrics of the last logged evaluation (the final one)."""
    for record in reversed(records):
        if LOGGED_EVAL_METRICS[0] in record:
            return {key: record.get(key) for key in LOGGED_EVAL_METRICS}
    return dict.fromkeys(LOGGED_EVAL_METRICS)


def _default_out_dir() -> str:
    return os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


_STEPS: dict = {}


def _train_step(graphdef, train_config: TrainConfig, mesh, state, layout):
    """One jitted step per (model graph, config, mesh, layout) in a process: a resumed or repeated run does not
    recompile. Shardings come from `state`'s shapes, which the graph and config determine, so they are not part
    of the key.
    """
    key = (graphdef, train_config, mesh, layout)
    if key not in _STEPS:
        if len(_STEPS) >= 8:
            _STEPS.pop(next(iter(_STEPS)))
        _STEPS[key] = make_train_step(graphdef, train_config, layout=layout,
                                      state_shardings=sharding.state_shardings(state, mesh),
                                      batch_shardings=sharding.batch_sharding(mesh))
    return _STEPS[key]


class _Progress:
    """tqdm bar when asked (and available); silent otherwise."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="dpo", unit="step", dynamic_ncols=True)

    def update(self, postfix: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _prepare(config: RunConfig, mesh):
    """Everything that can refuse the run, checked before anything is written: (task, fingerprint, changes), where
    `changes` is None for a new run and the accepted differences (option and data) for a resume."""
    sharding.validate_batch(config.batch_size, mesh, config.train.grad_accum, jax.process_count())
    validate_layout(config.layout, num_devices=mesh.size, grad_accum=config.train.grad_accum,
                    precompute_ref=config.train.precompute_ref)
    _check_eval(config, mesh)
    if config.resume:
        _, stored_fingerprint, changes = run_dirs.check_resume(config)
    else:
        run_dirs.check_new_run(config.out_dir, overwrite=config.overwrite)
    task = build_task(config, mesh)
    fingerprint = run_fingerprint(config, tokenizer=task.tokenizer, chat_template=task.chat_template)
    if not config.resume:
        return task, fingerprint, None
    if config.data is not None and not stored_fingerprint:
        _say(f"dpo-jax: {config.out_dir} has no data fingerprint (written by an older dpo-jax): the data cannot be "
             "compared with what the run trained on")
    return task, fingerprint, changes + run_dirs.check_resumed_data(config, stored_fingerprint, fingerprint)


def _open_run(config: RunConfig, task: Task, fingerprint: dict, changes, state, mesh, primary: bool):
    """Create (or reopen) the run directory and its Checkpointer; restore the state on resume.

    Returns (checkpointer, state, saved meta); the caller closes the checkpointer on every exit."""
    if changes is None and primary:
        run_dirs.create_new_run(config, fingerprint, log=_say)
    sharding.sync_processes("run directory")  # process 0 made it; the others open it
    checkpointer = Checkpointer(os.path.join(config.out_dir, run_dirs.CHECKPOINTS_DIR), keep=config.keep_checkpoints)
    if changes is None:
        return checkpointer, state, {}
    try:
        state, saved, step = checkpointer.restore_newest_intact(
            state, shardings=sharding.state_shardings(state, mesh), log=_say)
        if changes:
            _say(f"dpo-jax: resuming {config.out_dir} at step {step} with changes (--allow-changes): "
                 f"{'; '.join(changes)}")
            if primary:
                run_dirs.record_resume(config, fingerprint, changes, step=step)
    except BaseException:
        checkpointer.close()
        raise
    return checkpointer, state, saved


def run(config: RunConfig) -> dict:
    """Run (or resume) DPO training; returns the summary also written to summary.json.

    `config.resume` continues the run in `config.out_dir` (`load_run_config(dir)` returns such a config);
    otherwise `out_dir` must not hold a run unless `config.overwrite` (`train.run_dir`)."""
    config = dataclasses.replace(config, out_dir=config.out_dir or _default_out_dir())
    mesh = sharding.make_mesh(config.mesh)  # layout errors first: before any file or compile
    task, fingerprint, changes = _prepare(config, mesh)
    num_steps = config.num_steps
    primary = jax.process_index() == 0  # on several hosts only process 0 writes the run files
    train_config = config.train.replace(total_steps=max(num_steps, 1))
    graphdef, state = init_train_state(task.policy, task.reference, train_config, seed=config.seed)
    lora_info = None
    if isinstance(state.ref_params, FrozenBase):
        lora_info, lines = run_report(state, reference_free=train_config.reference_free,
                                      init_adapter=config.init_adapter)
        if primary:
            print("\n".join(lines), file=sys.stderr)
    state = sharding.shard_train_state(state, mesh)
    step_fn = _train_step(graphdef, train_config, mesh, state, config.layout)
    batches = layout_batches(config.layout, task.examples, batch_size=config.batch_size, seed=config.seed,
                             max_len=task.max_len, pad_id=task.pad_id, mask_alignment=train_config.mask_alignment,
                             forward=train_config.forward, process_index=jax.process_index(),
                             process_count=jax.process_count(), row_len=config.row_len, rows=config.rows)
    evaluator = _evaluator(config, task, graphdef, train_config, mesh)

    checkpointer, state, saved = _open_run(config, task, fingerprint, changes, state, mesh, primary)
    try:
        return _train(config, task, graphdef, train_config, mesh, state, saved, step_fn, batches, evaluator,
                      checkpointer, num_steps, primary, lora_info)
    finally:
        checkpointer.close()


def _train(config, task, graphdef, train_config, mesh, state, saved, step_fn, batches, evaluator, checkpointer,
           num_steps, primary, lora_info=None) -> dict:
    run_dir = config.out_dir
    meta = {"seed": config.seed, "train_config": train_config.to_dict(),
            "model_config": json.loads(task.policy.config.to_json()), "run_config": config.to_dict()}
    if config.resume:
        meta.update({k: v for k, v in saved.items() if k.startswith(("preferred_rate", "valid_rate"))})
    elif task.demo is not None:
        before = task.demo.rates(task.reference, seed=config.seed)
        meta.update(preferred_rate_before=before["preferred_rate"], valid_rate_before=before["valid_rate"])
    start = int(state.step)
    log = MetricsLog(run_dir, resume_step=start, write=primary)

    cache = None
    if train_config.precompute_ref and not train_config.reference_free:
        cache = ReferenceCache(graphdef, reference_params(state, task.reference), train_config, config.layout)
        cache.precompute(batches.get_batch(s)[0] for s in range(start, num_steps))
        if evaluator is not None:
            cache.precompute(evaluator.batch_arrays())

    reset_attention_report()  # the run log names the attention backend of this run's step ("auto" decides)
    progress = _Progress(config.progress, start, num_steps)
    timed_tokens, timed_seconds, metrics = 0, 0.0, {}
    completed, last_saved = start, (start if config.resume else None)
    try:
        with StopRequest(enabled=jax.process_count() == 1) as stop:
            for step in range(start, num_steps):
                arrays, num_scored = batches.get_batch(step)
                if cache is not None:
                    arrays = cache.with_reference(arrays)
                began = time.perf_counter()
                state, device_metrics = step_fn(state, sharding.make_global_batch(arrays, mesh))
                metrics = {k: np.asarray(v).item() for k, v in jax.device_get(device_metrics).items()}
                if step == start and primary:
                    for line in attention_report():
                        print(f"[dpo-jax] {line}", file=sys.stderr)
                if step > start:  # the first step of a process compiles; keep it out of the throughput
                    timed_seconds += time.perf_counter() - began
                    timed_tokens += num_scored
                if not metrics.pop("finite"):
                    bad = [f"{k}={metrics[k]}" for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
                    bad = bad or ["updated parameters are not finite"]
                    last = checkpointer.latest_step()
                    raise NonFiniteError(f"non-finite value at step {step + 1}: {', '.join(bad)}; training stopped, "
                                         f"update refused, last good checkpoint: "
                                         f"{'none' if last is None else f'step {last}'} in {checkpointer.directory}")
                done = completed = step + 1
                tokens_per_s = timed_tokens / timed_seconds if timed_seconds > 0 else float("nan")
                eval_metrics = _evaluate_if_due(evaluator, config, done, num_steps, state, cache)
                if done % config.log_every == 0 or done == num_steps or eval_metrics:
                    log.append(done, {**{k: metrics[k] for k in LOGGED_METRICS}, **_optional_metrics(metrics),
                                      "tokens_per_s": tokens_per_s, **eval_metrics})
                progress.update({"step": done, "loss": f"{metrics['loss']:.4f}",
                                 "acc": f"{metrics['rewards/accuracies']:.2f}", "tok/s": f"{tokens_per_s:.0f}"})
                if done % config.checkpoint_every == 0 or done == num_steps or stop.requested:
                    checkpointer.save(done, state, meta)
                    last_saved = done
                if stop.requested and done < num_steps:
                    raise RunInterrupted(done, num_steps, run_dir, done)
                if config.stop_after_step is not None and done >= config.stop_after_step:
                    return {"stopped_at_step": done}
    except KeyboardInterrupt:  # a second Ctrl-C, or one on a multi-process run: no new checkpoint
        raise RunInterrupted(completed, num_steps, run_dir, last_saved) from None
    finally:
        progress.close()

    policy = trained_policy(graphdef, state, mesh)
    from dpo_jax.train.pretrained import save_policy

    if primary:
        save_policy(policy, run_dir)
        plot_training(log.records, os.path.join(run_dir, PLOT_FILE))
    summary = {"steps": num_steps, "run_dir": os.path.abspath(run_dir),
               "tokens_per_s": timed_tokens / timed_seconds if timed_seconds > 0 else None,
               **{k: (metrics or (log.records[-1] if log.records else {})).get(k) for k in LOGGED_METRICS},
               "attention": attention_report()}
    if evaluator is not None:
        summary.update(_last_eval(log.records), eval_pairs=len(evaluator))
    if task.data is not None:
        summary["data"] = task.data
    if lora_info is not None:
        summary["lora"] = lora_info
    if task.demo is not None:
        after = task.demo.rates(policy, seed=config.seed)
        summary.update(preferred_rate_before=meta.get("preferred_rate_before"),
                       preferred_rate_after=after["preferred_rate"],
                       valid_rate_before=meta.get("valid_rate_before"), valid_rate_after=after["valid_rate"])
    if primary:
        write_json(os.path.join(run_dir, SUMMARY_FILE), summary)
    return summary
