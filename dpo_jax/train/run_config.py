"""`RunConfig`: what a run trains on, where it writes, and how it opens its run directory; `run_config.json`.

Every field but the four that say how to open the directory (`resume`, `overwrite`, `allow_changes`) and the
test hook `stop_after_step` is stored in the run directory's `run_config.json`, next to the data's fingerprint.
`RESUMABLE_FIELDS` are the ones a resume may change without changing what the run computes (how long it runs,
where it logs and checkpoints, the mesh); any other difference is a change of the training trajectory, refused
unless `allow_changes` (`train.run_dir`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from dpo_jax.forward import ForwardOptions
from dpo_jax.models.lora import LoraConfig
from dpo_jax.train.config import TrainConfig
from dpo_jax.train.outputs import RUN_CONFIG_FILE

__all__ = ["RunConfig", "RESUMABLE_FIELDS", "NOT_STORED", "DEFAULT_MODEL_SHAPE", "load_run_config", "read_run_file",
           "flat_fields", "replace_fields"]

RESUMABLE_FIELDS = ("out_dir", "steps", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "mesh",
                    "eval_every", "eval_batch_size")
NOT_STORED = ("resume", "overwrite", "allow_changes", "stop_after_step")
DEFAULT_MODEL_SHAPE = {"dim": 64, "depth": 2, "heads": 4}
FINGERPRINT_KEY = "fingerprint"


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
    dim: int | None = None             # a new model's shape (None: 64, 2, 4); init_from / model bring their own
    depth: int | None = None
    heads: int | None = None
    max_seq_len: int = 128             # a new model's length; with init_from / model, a cap on the pair length
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
    # how the run directory is opened (not stored): continue the run in out_dir; replace the run in out_dir
    # (moved aside, never deleted); accept a resume whose options or data differ (recorded in changes.jsonl)
    resume: bool = False
    overwrite: bool = False
    allow_changes: bool = False
    stop_after_step: int | None = None  # fault injection for tests: return as if killed after this step

    @property
    def num_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        if self.data is None:
            from dpo_jax.demo import DEMO_RECIPE
            return DEMO_RECIPE["quick_steps"] if self.quick else DEMO_RECIPE["steps"]
        return 100

    def model_shape(self) -> dict[str, int]:
        """dim, depth and heads of a new model (defaults for the ones left None)."""
        return {name: getattr(self, name) or default for name, default in DEFAULT_MODEL_SHAPE.items()}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in NOT_STORED:
            data.pop(name)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        data = dict(data)
        data["train"] = TrainConfig.from_dict(data.get("train", {}))
        if isinstance(data.get("lora"), dict):
            data["lora"] = LoraConfig.from_dict(data["lora"])
        return cls(**data)


def read_run_file(run_dir) -> dict[str, Any]:
    """The raw contents of `run_dir/run_config.json`; FileNotFoundError / ValueError (damaged) naming it."""
    path = os.path.join(os.fspath(run_dir), RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run directory: {RUN_CONFIG_FILE} is missing")
    with open(path) as handle:
        text = handle.read()
    if not text.strip():
        raise ValueError(f"{path} is empty: the run directory is damaged (a run_config.json is written before the "
                         "first step); start a new run elsewhere, or with --overwrite")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): the run directory is "
                         "damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_run_config(run_dir) -> RunConfig:
    """The config of the run in `run_dir`, set to resume it (`resume=True`, `out_dir=run_dir`)."""
    data = read_run_file(run_dir)
    data.pop(FINGERPRINT_KEY, None)
    path = os.path.join(os.fspath(run_dir), RUN_CONFIG_FILE)
    known = {field.name for field in dataclasses.fields(RunConfig)} - set(NOT_STORED)
    train_known = {field.name for field in dataclasses.fields(TrainConfig)} | {"bf16"}
    unknown = sorted(set(data) - known) + sorted(f"train.{k}" for k in set(data.get("train", {})) - train_known)
    if unknown:
        raise ValueError(f"{path} has unknown key(s) {unknown}: written by another version of dpo-jax, or edited; "
                         "resume it with the version that wrote it")
    try:
        config = RunConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} does not describe a valid run: {err}") from None
    config.out_dir = os.fspath(run_dir)
    config.resume = True
    return config


def flat_fields(config: RunConfig) -> dict[str, Any]:
    """{"seed": 0, ..., "train.beta": 0.1, ..., "train.forward.remat": None}: every stored field by its path."""
    flat = {}
    for key, value in config.to_dict().items():
        if key == "train":
            for train_key, train_value in value.items():
                if train_key == "forward":
                    flat.update({f"train.forward.{k}": v for k, v in train_value.items()})
                else:
                    flat[f"train.{train_key}"] = train_value
        else:
            flat[key] = value
    return flat


def replace_fields(config: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """A copy of `config` with fields given by path ("lr" style paths from `flat_fields`); each nested config is
    rebuilt once, so it is validated once, with every change applied."""
    top = {k: v for k, v in changes.items() if not k.startswith("train.")}
    train = {k[len("train."):]: v for k, v in changes.items() if k.startswith("train.") and
             not k.startswith("train.forward.")}
    forward = {k[len("train.forward."):]: v for k, v in changes.items() if k.startswith("train.forward.")}
    train_config = config.train
    if forward:
        train = dict(train, forward=ForwardOptions.of(dict(train_config.forward.to_dict(), **forward)))
    if train:
        train_config = train_config.replace(**train)
    return dataclasses.replace(config, **top, train=train_config)
