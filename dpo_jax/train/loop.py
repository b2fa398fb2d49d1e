"""`run(run_config)`: the whole DPO run - models, data, jitted step, logging, checkpoints, final files.

A run is resumable at any moment: batches are a pure function of (seed, step) (the layout's `get_batch`),
the TrainState (with its RNG) is checkpointed by orbax, and on resume metrics.jsonl is cut back to the
checkpoint's step, so the resumed run logs exactly what an uninterrupted run would have. A non-finite loss or
gradient norm stops the run (`NonFiniteError`) without saving: the last checkpoint stays the last good one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from dpo_jax import sharding
from dpo_jax.layouts import layout_batches, validate_layout
from dpo_jax.models.lora import LoraConfig
from dpo_jax.ops.attention import attention_report, reset_attention_report
from dpo_jax.train.checkpoint import Checkpointer
from dpo_jax.train.config import TrainConfig
from dpo_jax.train.evaluation import EVAL_METRICS, EVAL_PREFIX, Evaluator
from dpo_jax.train.lora import FrozenBase, lora_task, run_report
from dpo_jax.train.outputs import (PLOT_FILE, RUN_CONFIG_FILE, SUMMARY_FILE, MetricsLog, plot_training,
                                   write_json)
from dpo_jax.train.reference import ReferenceCache
from dpo_jax.train.run_data import check_eval_options, load_run_data
from dpo_jax.train.state import init_train_state, reference_params, trained_policy
from dpo_jax.train.step import make_train_step

LOGGED_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected", "grad_norm", "lr")
LOGGED_EVAL_METRICS = tuple(EVAL_PREFIX + name for name in EVAL_METRICS)
# logged too when the loss reports them: loss/<type> per term of a combination, nll_loss, logits/*
OPTIONAL_METRICS = ("loss/", "nll_loss", "logits/")


def _optional_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith(OPTIONAL_METRICS)}


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the update was refused and nothing was saved."""


@dataclasses.dataclass
class RunConfig:
    """What a run trains on and where it writes; `train` holds the optimisation hyper-parameters."""

    out_dir: str | None = None
    data: str | list[str] | None = None  # preference file(s) (dpo_jax.data reads them); None runs the built-in demo
    tokenizer: str | None = None       # HF tokenizer.json or tokenizer folder; None -> byte tokenizer
    chat_template: str | None = None   # Jinja file, tokenizer_config.json or folder; None: the tokenizer's folder
    eval_data: str | list[str] | None = None  # held-out preference file(s)
    eval_split: float | None = None    # or this fraction of --data held out (seeded by `seed`)
    eval_every: int | None = None      # evaluate every N steps; the final evaluation always runs
    eval_batch_size: int | None = None  # None: batch_size
    steps: int | None = None           # None: 150 for the demo (75 with quick), 100 with --data
    batch_size: int = 16
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    dim: int = 64
    depth: int = 2
    heads: int = 4
    max_seq_len: int = 128
    init_from: str | None = None       # safetensors written by models.x_transformers.save_safetensors
    model: str | None = None           # a Hugging Face model directory: policy, reference and tokenizer from it
    lora: LoraConfig | None = None     # train LoRA adapters on the model (the adapter-off base is the reference)
    init_adapter: str | None = None    # continue the adapters of this PEFT directory (frozen, they are the reference)
    mesh: str | None = None            # "data=2,fsdp=4" (dpo_jax.sharding); None: every device on data
    layout: str = "padded"             # padded | prefix_shared | packed (dpo_jax.layouts.LAYOUTS)
    row_len: int | None = None         # shared/packed row length; None: 2 * the task's max length
    rows: int | None = None            # packed rows per batch; None: batch_size
    quick: bool = False
    progress: bool = True
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    stop_after_step: int | None = None  # fault injection for tests: return as if killed after this step

    @property
    def num_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        if self.data is None:
            from dpo_jax.demo import DEMO_RECIPE
            return DEMO_RECIPE["quick_steps"] if self.quick else DEMO_RECIPE["steps"]
        return 100

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("stop_after_step")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        data["train"] = TrainConfig.from_dict(data.get("train", {}))
        if isinstance(data.get("lora"), dict):
            data["lora"] = LoraConfig.from_dict(data["lora"])
        return cls(**data)


def load_run_config(run_dir) -> RunConfig:
    """The config a run directory was started with (for --resume)."""
    path = os.path.join(run_dir, RUN_CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} is not a run directory: {RUN_CONFIG_FILE} is missing")
    with open(path) as handle:
        config = RunConfig.from_dict(json.load(handle))
    config.out_dir = os.fspath(run_dir)
    return config


@dataclasses.dataclass
class _Task:
    policy: Any
    reference: Any
    examples: list
    pad_id: int
    max_len: int
    demo: Any = None
    eval_examples: list = dataclasses.field(default_factory=list)
    data: dict | None = None           # what was read (summary.json)


def _build_task(config: RunConfig, mesh) -> _Task:
    task = _build_base_task(config, mesh)
    if config.lora is not None or config.init_adapter is not None:  # adapters on the policy; see train.lora
        task.policy, task.reference = lora_task(task.policy, config.lora, config.init_adapter, seed=config.seed)
    return task


def _build_base_task(config: RunConfig, mesh) -> _Task:
    from dpo_jax.models.x_transformers.safetensors_file import load_safetensors

    if config.model is not None:
        from dpo_jax.train.pretrained import pretrained_task

        policy, tokenizer, max_len = pretrained_task(config, mesh)
        data = _read_data(config, tokenizer, tokenizer_spec=config.model)
        return _Task(policy, policy, data.train, tokenizer.pad_id, max_len, eval_examples=data.eval,
                     data=data.summary())
    if config.data is None:
        from dpo_jax.demo import build_demo  # imported late: the demo trains its SFT reference on demand

        demo = build_demo(seed=config.seed, quick=config.quick)
        policy = demo.reference
        if config.init_from:  # the policy starts elsewhere; the reference stays the demo's SFT model
            policy = load_safetensors(config.init_from)
            if not policy.config.same_architecture(demo.reference.config):
                raise ValueError(f"--init-from {config.init_from}: architecture differs from the demo model")
        return _Task(policy, demo.reference, list(demo.train_examples), demo.pad_id, demo.max_len, demo)
    from dpo_jax.models.x_transformers import Transformer, TransformerConfig
    from dpo_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config.tokenizer)
    data = _read_data(config, tokenizer, tokenizer_spec=config.tokenizer)
    if config.init_from:
        model = load_safetensors(config.init_from)
    else:
        model_config = TransformerConfig(num_tokens=tokenizer.vocab_size, max_seq_len=config.max_seq_len,
                                         dim=config.dim, depth=config.depth, heads=config.heads,
                                         attn_dim_head=max(config.dim // config.heads, 1))
        model = Transformer(model_config, rngs=nnx.Rngs(config.seed))
    if model.config.num_tokens < tokenizer.vocab_size:
        raise ValueError(f"model vocabulary {model.config.num_tokens} < tokenizer vocabulary {tokenizer.vocab_size}")
    return _Task(model, model, data.train, tokenizer.pad_id, model.config.max_seq_len, eval_examples=data.eval,
                 data=data.summary())


def _read_data(config: RunConfig, tokenizer, *, tokenizer_spec):
    """The run's train and eval pairs (every file validated first), reported on stderr by process 0."""
    data = load_run_data(config.data, tokenizer, tokenizer_spec=tokenizer_spec, chat_template=config.chat_template,
                         eval_data=config.eval_data, eval_split=config.eval_split, seed=config.seed)
    if jax.process_index() == 0:
        print("\n".join(data.lines), file=sys.stderr)
    return data


def _check_eval(config: RunConfig, mesh) -> None:
    """Eval options that cannot work fail before any file is read or anything compiles."""
    check_eval_options(config.eval_data, config.eval_split, config.eval_every, config.eval_batch_size)
    if config.data is None and (config.eval_data is not None or config.eval_split is not None):
        raise ValueError("evaluation needs --data (the demo measures its policy by sampling instead)")
    if config.eval_data is not None or config.eval_split is not None:
        sharding.validate_batch(config.eval_batch_size or config.batch_size, mesh, 1, jax.process_count())


def _evaluator(config: RunConfig, task: _Task, graphdef, train_config: TrainConfig, mesh) -> Evaluator | None:
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


def run(config: RunConfig) -> dict:
    """Run (or resume) DPO training; returns the summary also written to summary.json."""
    mesh = sharding.make_mesh(config.mesh)  # layout errors first: before any file or compile
    sharding.validate_batch(config.batch_size, mesh, config.train.grad_accum, jax.process_count())
    validate_layout(config.layout, num_devices=mesh.size, grad_accum=config.train.grad_accum,
                    precompute_ref=config.train.precompute_ref)
    _check_eval(config, mesh)
    run_dir = config.out_dir or _default_out_dir()
    os.makedirs(run_dir, exist_ok=True)
    num_steps = config.num_steps
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=config.keep_checkpoints)
    resuming = checkpointer.latest_step() is not None
    primary = jax.process_index() == 0  # on several hosts only process 0 writes the run files
    if not resuming and primary:
        write_json(os.path.join(run_dir, RUN_CONFIG_FILE), config.to_dict())

    task = _build_task(config, mesh)
    train_config = config.train.replace(total_steps=max(num_steps, 1))
    graphdef, state = init_train_state(task.policy, task.reference, train_config, seed=config.seed)
    lora_info = None
    if isinstance(state.ref_params, FrozenBase):
        lora_info, lines = run_report(state, reference_free=train_config.reference_free, init_adapter=config.init_adapter)
        if primary:
            print("\n".join(lines), file=sys.stderr)
    state = sharding.shard_train_state(state, mesh)
    step_fn = _train_step(graphdef, train_config, mesh, state, config.layout)
    batches = layout_batches(config.layout, task.examples, batch_size=config.batch_size, seed=config.seed,
                             max_len=task.max_len, pad_id=task.pad_id, mask_alignment=train_config.mask_alignment,
                             forward=train_config.forward, process_index=jax.process_index(),
                             process_count=jax.process_count(), row_len=config.row_len, rows=config.rows)

    meta = {"seed": config.seed, "train_config": train_config.to_dict(),
            "model_config": json.loads(task.policy.config.to_json()), "run_config": config.to_dict()}
    if resuming:
        state, saved = checkpointer.restore(state, shardings=sharding.state_shardings(state, mesh))
        meta.update({k: v for k, v in saved.items() if k.startswith(("preferred_rate", "valid_rate"))})
    elif task.demo is not None:
        before = task.demo.rates(task.reference, seed=config.seed)
        meta.update(preferred_rate_before=before["preferred_rate"], valid_rate_before=before["valid_rate"])
    start = int(state.step)
    log = MetricsLog(run_dir, resume_step=start, write=primary)

    evaluator = _evaluator(config, task, graphdef, train_config, mesh)
    cache = None
    if train_config.precompute_ref and not train_config.reference_free:
        cache = ReferenceCache(graphdef, reference_params(state, task.reference), train_config, config.layout)
        cache.precompute(batches.get_batch(s)[0] for s in range(start, num_steps))
        if evaluator is not None:
            cache.precompute(evaluator.batch_arrays())

    reset_attention_report()  # the run log names the attention backend of this run's step ("auto" decides)
    progress = _Progress(config.progress, start, num_steps)
    timed_tokens, timed_seconds, metrics = 0, 0.0, {}
    try:
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
            done = step + 1
            tokens_per_s = timed_tokens / timed_seconds if timed_seconds > 0 else float("nan")
            eval_metrics = _evaluate_if_due(evaluator, config, done, num_steps, state, cache)
            if done % config.log_every == 0 or done == num_steps or eval_metrics:
                log.append(done, {**{k: metrics[k] for k in LOGGED_METRICS}, **_optional_metrics(metrics),
                                  "tokens_per_s": tokens_per_s, **eval_metrics})
            progress.update({"step": done, "loss": f"{metrics['loss']:.4f}",
                             "acc": f"{metrics['rewards/accuracies']:.2f}", "tok/s": f"{tokens_per_s:.0f}"})
            if done % config.checkpoint_every == 0 or done == num_steps:
                checkpointer.save(done, state, meta)
            if config.stop_after_step is not None and done >= config.stop_after_step:
                return {"stopped_at_step": done}
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
    checkpointer.close()
    return summary
