"""What a run trains: the policy and the reference, the tokenized pairs, and how they were read.

`build_task(config, mesh)` reads and validates everything a run needs before anything of the run is created:
the model (`--model DIR`, `--init-from FILE`, a new one of `--dim/--depth/--heads`, or the demo's), the tokenizer,
every data file, and then the rules a batch needs: pairs whose chosen equals rejected once truncated are skipped
(with a line counting them), and a batch may not be larger than the training set (it would repeat pairs).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
from flax import nnx

from dpo_jax.train.run_config import RunConfig
from dpo_jax.train.run_data import load_run_data

__all__ = ["Task", "check_task_options", "build_task"]

MODEL_SHAPE_FLAGS = {"dim": "--dim", "depth": "--depth", "heads": "--heads"}


@dataclasses.dataclass
class Task:
    policy: Any
    reference: Any
    examples: list
    pad_id: int
    max_len: int
    demo: Any = None
    eval_examples: list = dataclasses.field(default_factory=list)
    data: dict | None = None           # what was read (summary.json)
    tokenizer: Any = None              # what the data was tokenized with (the fingerprint)
    chat_template: Any = None


def _given_shape(config: RunConfig) -> dict:
    return {name: getattr(config, name) for name in MODEL_SHAPE_FLAGS if getattr(config, name) is not None}


def check_task_options(config: RunConfig) -> None:
    """Options that contradict each other, refused before any file is read."""
    shape = _given_shape(config)
    flags = ", ".join(MODEL_SHAPE_FLAGS[name] for name in shape)
    if config.data is None:
        if config.tokenizer or config.chat_template:
            raise ValueError("--tokenizer / --chat-template need --data: the built-in demo has its own tokenizer")
        if config.model is not None:
            raise ValueError("--model needs --data FILE (the built-in demo trains its own model)")
        if shape:
            raise ValueError(f"{flags} shape a new model for --data; the built-in demo trains its own: drop them")
    if config.model is not None and config.init_from:
        raise ValueError("--model and --init-from both say where the policy starts; give one")
    if config.model is not None and shape:
        raise ValueError(f"{flags} shape a new model; --model {config.model} brings its own: drop them")
    if config.max_seq_len < 2:
        raise ValueError(f"--max-seq-len {config.max_seq_len}: a pair needs at least 2 tokens (a token and the one "
                         "it predicts)")
    model_shape = config.model_shape()
    if model_shape["dim"] % model_shape["heads"]:
        raise ValueError(f"--dim {model_shape['dim']} must be divisible by --heads {model_shape['heads']}")


def _init_from(config: RunConfig):
    """The --init-from policy; explicit --dim/--depth/--heads must agree with it (they cannot reshape it)."""
    from dpo_jax.models.x_transformers.safetensors_file import load_safetensors

    model = load_safetensors(config.init_from)
    shape = _given_shape(config)
    own = {name: value for name, value in (("dim", model.config.dim), ("depth", model.config.depth),
                                           ("heads", model.config.heads))}
    differ = [f"{MODEL_SHAPE_FLAGS[name]} {value}" for name, value in shape.items() if own[name] != value]
    if differ:
        raise ValueError(f"--init-from {config.init_from} brings its own model (dim {own['dim']}, depth "
                         f"{own['depth']}, heads {own['heads']}); {', '.join(differ)} describe another: drop them")
    return model


def _read_data(config: RunConfig, tokenizer, *, tokenizer_spec):
    return load_run_data(config.data, tokenizer, tokenizer_spec=tokenizer_spec, chat_template=config.chat_template,
                         eval_data=config.eval_data, eval_split=config.eval_split, seed=config.seed)


def _with_data(config: RunConfig, policy, reference, tokenizer, data, max_len) -> Task:
    """The task of a --data run: pairs without a preference dropped, the batch size checked, the data reported."""
    if max_len < 2:
        raise ValueError(f"the model's maximum length {max_len} leaves no token to score: a pair needs at least 2")
    data = data.drop_pairs_without_preference(max_len)
    if jax.process_index() == 0:
        print("\n".join(data.lines), file=sys.stderr)
    if config.batch_size > len(data.train):
        raise ValueError(f"--batch-size {config.batch_size} is larger than the {len(data.train)} training pair(s): "
                         f"every batch would repeat pairs; use --batch-size {len(data.train)} or less, or more data")
    return Task(policy, reference, data.train, tokenizer.pad_id, max_len, eval_examples=data.eval,
                data=data.summary(), tokenizer=tokenizer, chat_template=data.chat_template)


def build_task(config: RunConfig, mesh) -> Task:
    task = _build_base_task(config, mesh)
    if config.lora is not None or config.init_adapter is not None:  # adapters on the policy; see train.lora
        from dpo_jax.train.lora import lora_task

        task.policy, task.reference = lora_task(task.policy, config.lora, config.init_adapter, seed=config.seed)
    return task


def _build_base_task(config: RunConfig, mesh) -> Task:
    check_task_options(config)
    if config.model is not None:
        from dpo_jax.train.pretrained import pretrained_task

        policy, tokenizer, max_len = pretrained_task(config, mesh)
        data = _read_data(config, tokenizer, tokenizer_spec=config.model)
        return _with_data(config, policy, policy, tokenizer, data, max_len)
    if config.data is None:
        from dpo_jax.demo import build_demo  # imported late: the demo trains its SFT reference on demand
        from dpo_jax.models.x_transformers.safetensors_file import load_safetensors

        demo = build_demo(seed=config.seed, quick=config.quick)
        policy = demo.reference
        if config.init_from:  # the policy starts elsewhere; the reference stays the demo's SFT model
            policy = load_safetensors(config.init_from)
            if not policy.config.same_architecture(demo.reference.config):
                raise ValueError(f"--init-from {config.init_from}: architecture differs from the demo model")
        if config.batch_size > len(demo.train_examples):
            raise ValueError(f"--batch-size {config.batch_size} is larger than the demo's "
                             f"{len(demo.train_examples)} training pairs")
        return Task(policy, demo.reference, list(demo.train_examples), demo.pad_id, demo.max_len, demo)
    from dpo_jax.models.x_transformers import Transformer, TransformerConfig
    from dpo_jax.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config.tokenizer)
    data = _read_data(config, tokenizer, tokenizer_spec=config.tokenizer)
    if config.init_from:
        model = _init_from(config)
    else:
        shape = config.model_shape()
        model_config = TransformerConfig(num_tokens=tokenizer.vocab_size, max_seq_len=config.max_seq_len,
                                         attn_dim_head=max(shape["dim"] // shape["heads"], 1), **shape)
        model = Transformer(model_config, rngs=nnx.Rngs(config.seed))
    if model.config.num_tokens < tokenizer.vocab_size:
        raise ValueError(f"model vocabulary {model.config.num_tokens} < tokenizer vocabulary {tokenizer.vocab_size}")
    return _with_data(config, model, model, tokenizer, data, model.config.max_seq_len)
