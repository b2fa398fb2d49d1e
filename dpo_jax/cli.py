"""`dpo-jax train`: command-line front end of `dpo_jax.train.run`; `dpo-jax inspect-data`: what the data becomes.

With no options `train` runs the built-in demo end to end; `--data FILE...` trains on preference files instead
(JSONL, JSON, gzip, Parquet or a saved dataset, in any of TRL's four formats). Bad options exit through argparse
(status 2, message on stderr), bad data with status 2 and the file and record; a non-finite loss exits with 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from dpo_jax.forward import LOGPROB_HEAD_CHOICES, SCORE_POSITIONS, ForwardOptions
from dpo_jax.layouts import LAYOUTS
from dpo_jax.losses import DIVERGENCES, LOSS_TYPES
from dpo_jax.models.lora.config import INITS as LORA_INITS
from dpo_jax.ops.attention import ATTENTION_BACKENDS
from dpo_jax.ops.remat import REMAT_POLICIES
from dpo_jax.train.optim import OPTIMIZERS, SCHEDULES


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where it has none (None) or is an off flag (False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _int_at_least(minimum: int, words: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, ">= 0")
_sequence_length = _int_at_least(2, ">= 2 (a pair needs a token and the one it predicts)")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _loss_types(text: str):
    """One loss type, or a comma-separated list of them (a weighted combination with --loss-weights)."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in LOSS_TYPES:
            raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from {', '.join(LOSS_TYPES)})")
    return names[0] if len(names) == 1 else tuple(names)


def _loss_weights(text: str):
    try:
        return tuple(_float(weight) for weight in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers (finite), got {text}") from None


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}")
    return value


def add_data_arguments(group, *, train: bool = True) -> None:
    """--data and what reads it (tokenizer, chat template), plus the held-out evaluation options for `train`."""
    group.add_argument("--data", nargs="+", action="extend", metavar="FILE",
                       help="preference file(s): JSONL, JSON, .gz, Parquet or a datasets.save_to_disk folder, in "
                            "TRL's formats (README: Preference data)" + ("; without it: the built-in demo. A "
                                                                         "new model starts from random weights "
                                                                         "unless --init-from or --model" if train
                                                                         else ""),
                       required=not train)
    group.add_argument("--tokenizer", help="Hugging Face tokenizer.json or tokenizer folder (without it: the byte "
                                           "tokenizer, 258 ids)")
    group.add_argument("--chat-template", metavar="FILE",
                       help="Jinja chat template (file, tokenizer_config.json or folder) for conversational data "
                            "(without it: the tokenizer folder's)")
    if not train:
        return
    group.add_argument("--eval-data", nargs="+", action="extend", metavar="FILE", help="held-out preference file(s)")
    group.add_argument("--eval-split", type=_fraction, metavar="F",
                       help="hold out this fraction of --data for evaluation (seeded by --seed)")
    group.add_argument("--eval-every", type=_positive_int, metavar="N",
                       help="evaluate every N steps (without it: only after the last step, which always evaluates)")
    group.add_argument("--eval-batch-size", type=_positive_int, metavar="N", help="without it: --batch-size")


def add_lora_arguments(group) -> None:
    """--lora-r and the other adapter options (docs/lora.md), --init-adapter, and the refused QLoRA flags."""
    group.add_argument("--lora-r", type=_positive_int, metavar="R", help="train rank-R LoRA adapters instead of every "
                       "weight; the reference is the adapter-off base (no copy); the run writes adapter/ (PEFT format)")
    group.add_argument("--lora-alpha", type=_positive_float, metavar="A", help="adapter scale alpha / r (default 2 r)")
    group.add_argument("--lora-targets", metavar="SPEC", help="all-linear (default: every linear layer but the head), "
                       "comma-separated layer names (q_proj,v_proj) or a regular expression on the full names")
    group.add_argument("--lora-exclude", metavar="SPEC", help="layers to leave out, same forms (default lm_head)")
    group.add_argument("--lora-dropout", type=_non_negative_float, metavar="P", help="dropout on the adapters' input (without it: 0)")
    group.add_argument("--use-rslora", action="store_true", help="scale alpha / sqrt(r) (rank-stabilised LoRA)")
    group.add_argument("--lora-init", choices=LORA_INITS, help="which factor starts at zero (default zero_b, PEFT's)")
    group.add_argument("--init-adapter", metavar="DIR", help="continue the LoRA adapters of a PEFT directory; a frozen "
                       "copy of them is the reference (the adapter-off base would be the wrong one)")
    for flag in ("--load-in-4bit", "--load-in-8bit"):
        group.add_argument(flag, action="store_true", help="refused: QLoRA (a quantised base) is not implemented")


def _lora_spec(text: str):
    """--lora-targets / --lora-exclude: all-linear, comma-separated names, or one regular expression."""
    text = text.strip()
    if text == "all-linear" or any(char in text for char in "*+?[](){}|^$\\"):
        return text
    return tuple(name.strip() for name in text.split(",") if name.strip())


def lora_config_from_args(args, parser):
    """The run's LoraConfig (None without --lora-r); the LoRA options' conflicts end in parser.error."""
    from dpo_jax.models.lora import QLORA_REFUSAL, LoraConfig

    if args.load_in_4bit or args.load_in_8bit:
        parser.error(f"--load-in-4bit / --load-in-8bit: {QLORA_REFUSAL}")
    options = {"--lora-alpha": args.lora_alpha, "--lora-targets": args.lora_targets,
               "--lora-exclude": args.lora_exclude, "--lora-dropout": args.lora_dropout,
               "--use-rslora": args.use_rslora or None, "--lora-init": args.lora_init}
    given = [flag for flag, value in options.items() if value is not None]
    if args.init_adapter is not None and (args.lora_r is not None or given):
        parser.error(f"--init-adapter brings its own rank, alpha and targets (adapter_config.json); drop "
                     f"{', '.join((['--lora-r'] if args.lora_r is not None else []) + given)}")
    if args.lora_r is None:
        if given:
            parser.error(f"{', '.join(given)} need --lora-r R")
        return None
    fields = dict(r=args.lora_r, alpha=args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_r,
                  use_rslora=args.use_rslora)
    if args.lora_targets is not None:
        fields["target_modules"] = _lora_spec(args.lora_targets)
    if args.lora_exclude is not None:
        fields["exclude"] = _lora_spec(args.lora_exclude)
    if args.lora_dropout is not None:
        fields["dropout"] = args.lora_dropout
    if args.lora_init is not None:
        fields["init"] = args.lora_init
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as err:
        parser.error(f"LoRA: {err}")


def add_inspect_command(commands) -> None:
    inspect = commands.add_parser("inspect-data", formatter_class=HelpFormatter,
                                  help="show what preference files become: counts, formats, lengths, truncation, "
                                       "one rendered example")
    group = inspect.add_argument_group("data")
    add_data_arguments(group, train=False)
    group.add_argument("--model", metavar="DIR", help="a Hugging Face model folder: only its tokenizer files are read "
                                                      "(tokenizer.json, tokenizer_config.json)")
    group.add_argument("--max-seq-len", type=_positive_int, default=128, help="the length truncation is measured at")
    group.add_argument("--example", type=_non_negative_int, default=0, help="which pair to render (0-based)")


def add_train_arguments(train) -> None:
    """Every option of `dpo-jax train` (also used on its own to tell which options a command line gave)."""
    data = train.add_argument_group("data and run")
    add_data_arguments(data)
    data.add_argument("--out", help="run directory, which must not hold a run (without it: runs/<timestamp>)")
    data.add_argument("--overwrite", action="store_true",
                      help="replace the run in --out: it is moved to <out>.replaced-<time>, not deleted")
    data.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest intact checkpoint, "
                      "with its options and data; only --steps, --mesh, --log-every, --checkpoint-every, "
                      "--keep-checkpoints, --eval-every, --eval-batch-size and --no-progress may differ")
    data.add_argument("--allow-changes", action="store_true",
                      help="with --resume: accept other options or changed data (each difference is recorded in "
                           "DIR/changes.jsonl)")
    data.add_argument("--steps", type=_positive_int, help="optimizer steps in all (without it: demo 150, "
                                                          "--quick 75, --data 100); on --resume, the new end")
    data.add_argument("--batch-size", type=_positive_int, help="pairs per step (without it: demo 32, --data 16)")
    data.add_argument("--seed", type=_non_negative_int, default=0, help="model init, data order, demo task, eval split")
    data.add_argument("--log-every", type=_positive_int, default=1, help="write metrics.jsonl every N steps")
    data.add_argument("--checkpoint-every", type=_positive_int, default=50, help="save a checkpoint every N steps "
                                                                                  "(and after the last)")
    data.add_argument("--keep-checkpoints", type=_positive_int, default=3, help="how many checkpoints to keep")
    data.add_argument("--quick", action="store_true", help="shortened demo (tests, CI); no effect with --data")
    data.add_argument("--layout", choices=list(LAYOUTS), default="padded",
                      help="padded rows, prefix sharing ([prompt, chosen, rejected] per row), or packed shared pairs")
    data.add_argument("--row-len", type=_positive_int, help="prefix_shared/packed row length (without it: 2 x max "
                                                           "length)")
    data.add_argument("--rows", type=_positive_int, help="packed rows per batch (without it: --batch-size)")
    data.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    scale = train.add_argument_group("devices (docs/sharding.md)")
    scale.add_argument("--mesh", metavar="data=D,fsdp=F",
                       help="device mesh, e.g. data=2,fsdp=4 (without it: every device on data); --resume may "
                            "change it")
    scale.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: process 0's address "
                       "(or DPO_JAX_COORDINATOR; TPU pods, SLURM, Open MPI are auto-detected)")
    scale.add_argument("--num-processes", type=_positive_int, help="multi-host: number of processes")
    scale.add_argument("--process-id", type=_non_negative_int, help="multi-host: this process's index")
    scale.add_argument("--init-timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                       help="multi-host: how long a process waits for the coordinator")
    loss = train.add_argument_group("loss")
    loss.add_argument("--beta", type=_positive_float, help="KL strength (without it: demo 1.0 with summed "
                                                           "log-probs, --data 0.1)")
    loss.add_argument("--loss-type", type=_loss_types, metavar="TYPE[,TYPE...]",
                      help=f"one of {', '.join(LOSS_TYPES)}, or a comma-separated combination (e.g. sigmoid,sft; "
                           "README: the loss family); without it: demo sigmoid,sft (weights 1,0.5), --data sigmoid")
    loss.add_argument("--loss-weights", type=_loss_weights, metavar="W[,W...]",
                      help="one weight per --loss-type term (without it: all 1), e.g. 1,0.2")
    loss.add_argument("--ld-alpha", type=_float, metavar="A", help="LD-DPO: scale of the log-probs past the shorter "
                      "completion, in [0, 1] (needs --reduction sum)")
    loss.add_argument("--use-weighting", action="store_true", help="WPO: weight pairs by the policy's own "
                      "token probabilities")
    loss.add_argument("--logits-metrics", action="store_true", help="also log logits/chosen and logits/rejected")
    loss.add_argument("--reduction", choices=("mean", "sum"), help="per-sequence log-prob: mean over tokens (the "
                                                                  "seed) or sum (the paper); without it: demo sum, "
                                                                  "--data mean")
    loss.add_argument("--divergence", choices=DIVERGENCES, default="reverse_kl", help="f-divergence score (f-DPO)")
    loss.add_argument("--label-smoothing", type=_float, default=0.0, help="cDPO / robust / EXO smoothing e")
    loss.add_argument("--precompute-ref", action="store_true", help="reference log-probs once, cached")
    loss.add_argument("--ref-sync-every", type=_non_negative_int, default=0, metavar="K",
                      help="TR-DPO: mix the policy into the reference every K steps (0: never)")
    loss.add_argument("--ref-sync-alpha", type=_float, default=0.6, metavar="A", help="TR-DPO mixing weight in [0, 1]")
    optim = train.add_argument_group("optimizer")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="adamw, or rmsprop (the DPO paper)")
    optim.add_argument("--lr", type=_positive_float, help="peak learning rate (without it: adamw 1e-4, rmsprop 1e-6)")
    optim.add_argument("--warmup-steps", type=_non_negative_int, help="linear warmup (without it: adamw 0, rmsprop "
                                                                      "150)")
    optim.add_argument("--schedule", choices=SCHEDULES, default="constant", help="learning rate after warmup")
    optim.add_argument("--weight-decay", type=_non_negative_float, default=0.0, help="adamw's decoupled weight decay")
    optim.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per step (they divide "
                                                                           "--batch-size)")
    optim.add_argument("--grad-clip", type=_non_negative_float, default=1.0, help="global-norm clip; 0 disables")
    forward = train.add_argument_group("forward pass (how the log-probs are computed; never what they are)")
    forward.add_argument("--logprob-head", choices=LOGPROB_HEAD_CHOICES, default="auto",
                         help="full logits, or the chunked head that never builds them (auto: chunked for "
                              "vocabularies >= 4096)")
    forward.add_argument("--head-chunk-size", type=_positive_int, default=ForwardOptions.head_chunk_size,
                         help="tokens per chunk of the chunked head")
    forward.add_argument("--score-positions", choices=SCORE_POSITIONS, default="scored",
                         help="send only the scored positions to the head, or all of them")
    forward.add_argument("--remat", choices=list(REMAT_POLICIES), default="none",
                         help="per-block rematerialisation: recompute activations in the backward pass")
    forward.add_argument("--compute-dtype", choices=("float32", "bfloat16", "float16"),
                         help="forward dtype; master weights, log-softmax and loss stay float32 (without it: the "
                              "model's)")
    forward.add_argument("--bf16", action="store_true", help="shorthand for --compute-dtype bfloat16")
    forward.add_argument("--attention", choices=ATTENTION_BACKENDS, default="auto",
                         help="attention backend (auto: cudnn on NVIDIA GPUs in bf16/fp16, splash on TPU, else xla)")
    model = train.add_argument_group("model (with --data)")
    model.add_argument("--model", metavar="DIR", help="a Hugging Face model directory (Llama, Mistral, Qwen2, Qwen3, "
                       "Gemma 2, Gemma 3): policy, reference and tokenizer start from it; the run writes hf_policy/; "
                       "--max-seq-len caps the pair length")
    model.add_argument("--init-from", metavar="FILE.safetensors",
                       help="start the policy (and the reference) from a policy.safetensors (dpo-jax train, "
                            "dpo_jax.save_safetensors); its shape is the file's")
    model.add_argument("--dim", type=_positive_int, help="width of a new model (without --model / --init-from: "
                                                         "64); it starts from random weights")
    model.add_argument("--depth", type=_positive_int, help="layers of a new model (64 wide: 2)")
    model.add_argument("--heads", type=_positive_int, help="attention heads of a new model (4)")
    model.add_argument("--max-seq-len", type=_sequence_length, default=128,
                       help="a new model's length and the pair length (with --model: a cap on the pair length; "
                            "with --init-from: the file's length is used)")
    add_lora_arguments(train.add_argument_group("LoRA adapters (docs/lora.md)"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpo-jax", description="DPO training in JAX/Flax/optax.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", formatter_class=HelpFormatter,
                                help="train a policy with DPO (no options: run the demo)",
                                description="Train a policy with DPO. Without --data: the built-in demo. Exit "
                                            "status 0 done, 1 a non-finite loss or gradient, 2 bad input, 130 "
                                            "interrupted (Ctrl-C: checkpointed, resumable).")
    add_train_arguments(train)
    add_inspect_command(commands)
    return parser


# How each option of `dpo-jax train` sets a RunConfig field (a path of run_config.flat_fields), and how its value
# becomes the field's. Options absent here are about processes or the run directory, not about the run.
OPTION_FIELDS = {
    "out": "out_dir", "data": "data", "tokenizer": "tokenizer", "chat_template": "chat_template",
    "eval_data": "eval_data", "eval_split": "eval_split", "eval_every": "eval_every",
    "eval_batch_size": "eval_batch_size", "steps": "steps", "batch_size": "batch_size", "seed": "seed",
    "log_every": "log_every", "checkpoint_every": "checkpoint_every", "keep_checkpoints": "keep_checkpoints",
    "quick": "quick", "layout": "layout", "row_len": "row_len", "rows": "rows", "mesh": "mesh", "model": "model",
    "init_from": "init_from", "dim": "dim", "depth": "depth", "heads": "heads", "max_seq_len": "max_seq_len",
    "no_progress": "progress",
    "beta": "train.beta", "loss_type": "train.loss_type", "loss_weights": "train.loss_weights",
    "ld_alpha": "train.ld_alpha", "use_weighting": "train.use_weighting", "logits_metrics": "train.logits_metrics",
    "reduction": "train.reduction",
    "divergence": "train.divergence", "label_smoothing": "train.label_smoothing",
    "precompute_ref": "train.precompute_ref", "ref_sync_every": "train.ref_sync_every",
    "ref_sync_alpha": "train.ref_sync_alpha", "optimizer": "train.optimizer", "lr": "train.learning_rate",
    "warmup_steps": "train.warmup_steps", "schedule": "train.schedule", "weight_decay": "train.weight_decay",
    "grad_accum": "train.grad_accum", "grad_clip": "train.grad_clip",
    "logprob_head": "train.forward.logprob_head", "head_chunk_size": "train.forward.head_chunk_size",
    "score_positions": "train.forward.score_positions", "remat": "train.forward.remat",
    "compute_dtype": "train.forward.compute_dtype", "bf16": "train.forward.compute_dtype",
    "attention": "train.forward.attention",
    # the LoRA options make one field, the run's LoraConfig (lora_config_from_args)
    **dict.fromkeys(("lora_r", "lora_alpha", "lora_targets", "lora_exclude", "lora_dropout", "use_rslora", "lora_init",
                     "load_in_4bit", "load_in_8bit"), "lora"),
    "init_adapter": "init_adapter",
}
LORA_OPTIONS = tuple(name for name, field in OPTION_FIELDS.items() if field == "lora")
_SKIP = object()
OPTION_VALUES = {"no_progress": lambda value: not value, "grad_clip": lambda value: value or None,
                 "bf16": lambda value: "bfloat16" if value else _SKIP}


def explicit_train_options(argv) -> set[str]:
    """The options of `dpo-jax train` that `argv` gives, whatever their values (a default given explicitly
    counts: on --resume it is compared with the run's)."""
    argv = list(argv)
    parser = argparse.ArgumentParser(add_help=False)
    add_train_arguments(parser)
    for action in parser._actions:  # argparse has no public way to ask which options were given: no defaults
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv[argv.index("train") + 1:] if "train" in argv else argv)))


def _fields(args, names) -> dict:
    changes = {}
    for name in names:
        if name not in OPTION_FIELDS or name in LORA_OPTIONS:
            continue
        value = OPTION_VALUES.get(name, lambda v: v)(getattr(args, name))
        if value is not _SKIP:
            changes[OPTION_FIELDS[name]] = value
    return changes


GENERAL_DEFAULTS = {"beta": 0.1, "reduction": "mean", "batch_size": 16, "loss_type": "sigmoid"}


def fill_task_defaults(args):
    """Options left unset take the demo's tuned recipe (no --data) or the seed's general defaults."""
    if args.data is None:
        from dpo_jax.demo import DEMO_RECIPE
        defaults = dict(DEMO_RECIPE, lr=DEMO_RECIPE["learning_rate"],
                        steps=DEMO_RECIPE["quick_steps"] if args.quick else DEMO_RECIPE["steps"])
    else:
        defaults = GENERAL_DEFAULTS
    if args.loss_type is None:   # the recipe's loss weights belong to its loss types only
        args.loss_type = defaults["loss_type"]
        if args.loss_weights is None:
            args.loss_weights = defaults.get("loss_weights")
    for name in ("beta", "reduction", "batch_size", "lr", "steps"):
        if getattr(args, name, None) is None and name in defaults:
            setattr(args, name, defaults[name])


def resume_config_from_args(args, parser, explicit: set[str]):
    """The stored config of --resume DIR with the options this command gave applied (the run decides which of
    them it accepts: `train.run_dir.check_resume`)."""
    from dpo_jax.train import load_run_config
    from dpo_jax.train.run_config import replace_fields

    for flag, name in (("--out", "out"), ("--overwrite", "overwrite")):
        if name in explicit:
            parser.error(f"{flag} starts a new run; --resume DIR continues the one in DIR: give one of them")
    given_lora = [f"--{name.replace('_', '-')}" for name in (*LORA_OPTIONS, "init_adapter") if name in explicit]
    if given_lora:
        parser.error(f"--resume DIR keeps the run's adapters (run_config.json): drop {', '.join(given_lora)}")
    try:
        config = load_run_config(args.resume)
        config = replace_fields(config, _fields(args, explicit - {"out"}))
    except (FileNotFoundError, ValueError, TypeError) as err:
        parser.error(str(err))
    config.allow_changes = args.allow_changes
    return config


def run_config_from_args(args, parser, explicit: set[str] | None = None):
    from dpo_jax.train import RunConfig
    from dpo_jax.train.run_config import replace_fields

    explicit = set(vars(args)) if explicit is None else explicit
    if args.resume:
        return resume_config_from_args(args, parser, explicit)
    if args.allow_changes:
        parser.error("--allow-changes applies to --resume DIR")
    fill_task_defaults(args)
    if args.model is not None and (args.data is None or args.init_from is not None):
        parser.error("--model needs --data FILE and excludes --init-from")
    shape = RunConfig(dim=args.dim, depth=args.depth, heads=args.heads).model_shape()
    if shape["dim"] % shape["heads"]:
        parser.error(f"--dim {shape['dim']} must be divisible by --heads {shape['heads']}")
    if args.bf16 and args.compute_dtype not in (None, "bfloat16"):
        parser.error(f"--bf16 contradicts --compute-dtype {args.compute_dtype}")
    try:
        config = replace_fields(RunConfig(), _fields(args, OPTION_FIELDS))
    except ValueError as err:
        parser.error(str(err))
    if args.batch_size % args.grad_accum:
        parser.error(f"--batch-size {args.batch_size} must be divisible by --grad-accum {args.grad_accum}")
    check_eval_arguments(args, parser)
    config.lora = lora_config_from_args(args, parser)
    config.init_adapter = args.init_adapter
    config.overwrite = args.overwrite
    return config


def check_eval_arguments(args, parser) -> None:
    if args.data is None and (args.eval_data or args.eval_split is not None):
        parser.error("--eval-data / --eval-split need --data (the demo measures its policy by sampling instead)")
    if args.eval_data and args.eval_split is not None:
        parser.error("give --eval-data or --eval-split, not both")
    if not args.eval_data and args.eval_split is None:
        for flag, value in (("--eval-every", args.eval_every), ("--eval-batch-size", args.eval_batch_size)):
            if value is not None:
                parser.error(f"{flag} needs --eval-data or --eval-split")


def inspect_main(args) -> int:
    """`dpo-jax inspect-data`: read and validate the files as `train` would, then print what they became."""
    from dpo_jax.data import DataError, find_chat_template, inspect_report, read_preference_data
    from dpo_jax.tokenizer import load_tokenizer

    if args.model and args.tokenizer:
        print("dpo-jax: give --model DIR or --tokenizer, not both", file=sys.stderr)
        return 2
    tokenizer_spec = args.model or args.tokenizer
    try:
        tokenizer = load_tokenizer(tokenizer_spec)
        data = read_preference_data(args.data, tokenizer,
                                    chat_template=lambda: find_chat_template(args.chat_template, tokenizer_spec))
        print(inspect_report(data, tokenizer, max_len=args.max_seq_len, example_index=args.example))
    except (DataError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"dpo-jax: {err}", file=sys.stderr)
        return 2
    return 0


def _interrupted(config, stop=None) -> int:
    """Ctrl-C: where the run stands and the exact command that continues it."""
    from dpo_jax.train.run_dir import checkpoint_steps, resume_command

    if stop is not None and stop.checkpoint_step is not None:
        saved = (f"checkpoint at step {stop.checkpoint_step}" if stop.checkpoint_step == stop.step else
                 f"last checkpoint at step {stop.checkpoint_step}")
        print(f"dpo-jax: interrupted at step {stop.step} of {stop.num_steps}; {saved} in {stop.run_dir}; resume "
              f"with: {resume_command(stop.run_dir)}", file=sys.stderr)
        return 130
    steps = checkpoint_steps(config.out_dir) if config.out_dir else []
    if steps:
        print(f"dpo-jax: interrupted; last checkpoint at step {steps[-1]} in {config.out_dir}; resume with: "
              f"{resume_command(config.out_dir)}", file=sys.stderr)
    else:
        print("dpo-jax: interrupted before the first checkpoint: nothing to resume", file=sys.stderr)
    return 130


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "inspect-data":
        return inspect_main(args)
    config = run_config_from_args(args, parser, explicit_train_options(argv))
    from dpo_jax.sharding import initialize_distributed, parse_mesh_spec

    if config.mesh is not None:
        try:
            parse_mesh_spec(config.mesh)  # syntax and axis names; the device count is checked by train()
        except ValueError as err:
            parser.error(f"--mesh: {err}")
    try:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id, timeout=args.init_timeout)
    except (ConnectionError, ValueError) as err:
        print(f"dpo-jax: {err}", file=sys.stderr)
        return 2
    from dpo_jax.data import DataError
    from dpo_jax.train import NonFiniteError, RunInterrupted, run

    try:
        summary = run(config)
    except RunInterrupted as stop:
        return _interrupted(config, stop)
    except KeyboardInterrupt:
        return _interrupted(config)
    except NonFiniteError as err:
        print(f"dpo-jax: {err}", file=sys.stderr)
        return 1
    except (DataError, FileNotFoundError, ValueError, ImportError, OSError) as err:  # bad data, paths, extras
        print(f"dpo-jax: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
