"""`dpo-jax train`: command-line front end of `dpo_jax.train.run`; `dpo-jax inspect-data`: what the data becomes.

With no options `train` runs the built-in demo end to end; `--data FILE...` trains on preference files instead
(JSONL, JSON, gzip, Parquet or a saved dataset, in any of TRL's four formats). Bad options exit through argparse
(status 2, message on stderr), bad data with status 2 and the file and record; a non-finite loss exits with 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from dpo_jax.forward import LOGPROB_HEAD_CHOICES, SCORE_POSITIONS, ForwardOptions
from dpo_jax.layouts import LAYOUTS
from dpo_jax.losses import DIVERGENCES, LOSS_TYPES
from dpo_jax.models.lora.config import INITS as LORA_INITS
from dpo_jax.ops.attention import ATTENTION_BACKENDS
from dpo_jax.ops.remat import REMAT_POLICIES
from dpo_jax.train.optim import OPTIMIZERS, SCHEDULES


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
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
        return tuple(float(weight) for weight in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text}") from None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}")
    return value


def add_data_arguments(group, *, train: bool = True) -> None:
    """--data and what reads it (tokenizer, chat template), plus the held-out evaluation options for `train`."""
    group.add_argument("--data", nargs="+", action="extend", metavar="FILE",
                       help="preference file(s): JSONL, JSON, .gz, Parquet or a datasets.save_to_disk folder, in "
                            "TRL's formats (README: Preference data)" + ("; default: the built-in demo" if train else ""),
                       required=not train)
    group.add_argument("--tokenizer", help="Hugging Face tokenizer.json or tokenizer folder (default: byte tokenizer)")
    group.add_argument("--chat-template", metavar="FILE",
                       help="Jinja chat template (file, tokenizer_config.json or folder) for conversational data "
                            "(default: the tokenizer folder's)")
    if not train:
        return
    group.add_argument("--eval-data", nargs="+", action="extend", metavar="FILE", help="held-out preference file(s)")
    group.add_argument("--eval-split", type=_fraction, metavar="F",
                       help="hold out this fraction of --data for evaluation (seeded by --seed)")
    group.add_argument("--eval-every", type=_positive_int, metavar="N",
                       help="evaluate every N steps (default: only after the last step, which always evaluates)")
    group.add_argument("--eval-batch-size", type=_positive_int, metavar="N", help="default: --batch-size")


def add_lora_arguments(group) -> None:
    """--lora-r and the other adapter options (docs/lora.md), --init-adapter, and the refused QLoRA flags."""
    group.add_argument("--lora-r", type=_positive_int, metavar="R", help="train rank-R LoRA adapters instead of every "
                       "weight; the reference is the adapter-off base (no copy); the run writes adapter/ (PEFT format)")
    group.add_argument("--lora-alpha", type=_positive_float, metavar="A", help="adapter scale alpha / r (default 2 r)")
    group.add_argument("--lora-targets", metavar="SPEC", help="all-linear (default: every linear layer but the head), "
                       "comma-separated layer names (q_proj,v_proj) or a regular expression on the full names")
    group.add_argument("--lora-exclude", metavar="SPEC", help="layers to leave out, same forms (default lm_head)")
    group.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the adapters' input (default 0)")
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
    inspect = commands.add_parser("inspect-data", help="show what preference files become: counts, formats, "
                                                       "lengths, truncation, one rendered example")
    group = inspect.add_argument_group("data")
    add_data_arguments(group, train=False)
    group.add_argument("--model", metavar="DIR", help="a Hugging Face model folder: only its tokenizer files are read "
                                                      "(tokenizer.json, tokenizer_config.json)")
    group.add_argument("--max-seq-len", type=_positive_int, default=128, help="the length truncation is measured at")
    group.add_argument("--example", type=_non_negative_int, default=0, help="which pair to render (0-based)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpo-jax", description="DPO training in JAX/Flax/optax.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a policy with DPO (no options: run the demo)")
    data = train.add_argument_group("data and run")
    add_data_arguments(data)
    data.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    data.add_argument("--resume", metavar="DIR", help="resume the run in DIR from its last checkpoint")
    data.add_argument("--steps", type=_positive_int)
    data.add_argument("--batch-size", type=_positive_int, help="default: demo 32, --data 16")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--log-every", type=_positive_int, default=1)
    data.add_argument("--checkpoint-every", type=_positive_int, default=50)
    data.add_argument("--keep-checkpoints", type=_positive_int, default=3)
    data.add_argument("--quick", action="store_true", help="shortened demo (tests, CI)")
    data.add_argument("--layout", choices=list(LAYOUTS), default="padded",
                      help="padded rows, prefix sharing ([prompt, chosen, rejected] per row), or packed shared pairs")
    data.add_argument("--row-len", type=_positive_int, help="prefix_shared/packed row length (default 2 x max length)")
    data.add_argument("--rows", type=_positive_int, help="packed rows per batch (default --batch-size)")
    data.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    scale = train.add_argument_group("devices (docs/sharding.md)")
    scale.add_argument("--mesh", metavar="data=D,fsdp=F",
                       help="device mesh, e.g. data=2,fsdp=4 (default: every device on data); --resume may change it")
    scale.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: process 0's address "
                       "(or DPO_JAX_COORDINATOR; TPU pods, SLURM, Open MPI are auto-detected)")
    scale.add_argument("--num-processes", type=_positive_int, help="multi-host: number of processes")
    scale.add_argument("--process-id", type=_non_negative_int, help="multi-host: this process's index")
    scale.add_argument("--init-timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                       help="multi-host: how long a process waits for the coordinator (default 300)")
    loss = train.add_argument_group("loss")
    loss.add_argument("--beta", type=_positive_float, help="default: demo 1.0 (summed log-probs), --data 0.1")
    loss.add_argument("--loss-type", type=_loss_types, metavar="TYPE[,TYPE...]",
                      help=f"one of {', '.join(LOSS_TYPES)}, or a comma-separated combination (e.g. sigmoid,sft); "
                           "default: demo sigmoid,sft (weights 1,0.5), --data sigmoid")
    loss.add_argument("--loss-weights", type=_loss_weights, metavar="W[,W...]",
                      help="one weight per --loss-type term (default all 1), e.g. 1,0.2")
    loss.add_argument("--ld-alpha", type=float, metavar="A", help="LD-DPO: scale of the log-probs past the shorter "
                      "completion, in [0, 1] (needs --reduction sum)")
    loss.add_argument("--use-weighting", action="store_true", help="WPO: weight pairs by the policy's own "
                      "token probabilities")
    loss.add_argument("--logits-metrics", action="store_true", help="also log logits/chosen and logits/rejected")
    loss.add_argument("--reduction", choices=("mean", "sum"), help="default: demo sum, --data mean (the seed)")
    loss.add_argument("--divergence", choices=DIVERGENCES, default="reverse_kl")
    loss.add_argument("--label-smoothing", type=float, default=0.0)
    loss.add_argument("--precompute-ref", action="store_true", help="reference log-probs once, cached")
    loss.add_argument("--ref-sync-every", type=_non_negative_int, default=0, metavar="K", help="TR-DPO period")
    loss.add_argument("--ref-sync-alpha", type=float, default=0.6, metavar="A", help="TR-DPO mixing weight")
    optim = train.add_argument_group("optimizer")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    optim.add_argument("--lr", type=_positive_float, help="peak learning rate (default adamw 1e-4, rmsprop 1e-6)")
    optim.add_argument("--warmup-steps", type=_non_negative_int, help="default adamw 0, rmsprop 150")
    optim.add_argument("--schedule", choices=SCHEDULES, default="constant")
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument("--grad-accum", type=_positive_int, default=1)
    optim.add_argument("--grad-clip", type=float, default=1.0, help="global-norm clip; 0 disables")
    forward = train.add_argument_group("forward pass (how the log-probs are computed; never what they are)")
    forward.add_argument("--logprob-head", choices=LOGPROB_HEAD_CHOICES, default="auto",
                         help="full logits, or the chunked head that never builds them (auto: chunked for "
                              "vocabularies >= 4096)")
    forward.add_argument("--head-chunk-size", type=_positive_int, default=ForwardOptions.head_chunk_size,
                         help="tokens per chunk of the chunked head")
    forward.add_argument("--score-positions", choices=SCORE_POSITIONS, default="scored",
                         help="send only the scored positions to the head (default), or all of them")
    forward.add_argument("--remat", choices=list(REMAT_POLICIES), default="none",
                         help="per-block rematerialisation: recompute activations in the backward pass")
    forward.add_argument("--compute-dtype", choices=("float32", "bfloat16", "float16"),
                         help="forward dtype; master weights, log-softmax and loss stay float32")
    forward.add_argument("--bf16", action="store_true", help="shorthand for --compute-dtype bfloat16")
    forward.add_argument("--attention", choices=ATTENTION_BACKENDS, default="auto",
                         help="attention backend (auto: cudnn on NVIDIA GPUs in bf16/fp16, splash on TPU, else xla)")
    model = train.add_argument_group("model (with --data)")
    model.add_argument("--model", metavar="DIR", help="a Hugging Face model directory (Llama, Mistral, Qwen2, Qwen3, "
                       "Gemma 2, Gemma 3): policy, reference and tokenizer start from it; the run writes hf_policy/; "
                       "--max-seq-len caps the pair length")
    model.add_argument("--dim", type=_positive_int, default=64)
    model.add_argument("--depth", type=_positive_int, default=2)
    model.add_argument("--heads", type=_positive_int, default=4)
    model.add_argument("--max-seq-len", type=_positive_int, default=128)
    model.add_argument("--init-from", metavar="FILE.safetensors", help="start from a converted checkpoint")
    add_lora_arguments(train.add_argument_group("LoRA adapters (docs/lora.md)"))
    add_inspect_command(commands)
    return parser


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


def run_config_from_args(args, parser):
    from dpo_jax.train import RunConfig, TrainConfig, load_run_config

    if args.resume:
        try:
            config = load_run_config(args.resume)
        except FileNotFoundError as err:
            parser.error(str(err))
        if args.steps is not None:
            config.steps = args.steps
        if args.mesh is not None:
            config.mesh = args.mesh
        config.progress = not args.no_progress
        return config
    fill_task_defaults(args)
    if args.model is not None and (args.data is None or args.init_from is not None):
        parser.error("--model needs --data FILE and excludes --init-from")
    if args.dim % args.heads:
        parser.error(f"--dim {args.dim} must be divisible by --heads {args.heads}")
    if args.bf16 and args.compute_dtype not in (None, "bfloat16"):
        parser.error(f"--bf16 contradicts --compute-dtype {args.compute_dtype}")
    try:
        forward_options = ForwardOptions(
            logprob_head=args.logprob_head, head_chunk_size=args.head_chunk_size,
            score_positions=args.score_positions, remat=args.remat,
            compute_dtype="bfloat16" if args.bf16 else args.compute_dtype, attention=args.attention)
        train_config = TrainConfig(
            beta=args.beta, loss_type=args.loss_type, reduction=args.reduction, divergence=args.divergence,
            loss_weights=args.loss_weights, ld_alpha=args.ld_alpha, use_weighting=args.use_weighting,
            logits_metrics=args.logits_metrics,
            label_smoothing=args.label_smoothing, optimizer=args.optimizer, learning_rate=args.lr,
            warmup_steps=args.warmup_steps, schedule=args.schedule, weight_decay=args.weight_decay,
            grad_accum=args.grad_accum, grad_clip=args.grad_clip or None, precompute_ref=args.precompute_ref,
            ref_sync_every=args.ref_sync_every, ref_sync_alpha=args.ref_sync_alpha, forward=forward_options)
    except ValueError as err:
        parser.error(str(err))
    if args.batch_size % args.grad_accum:
        parser.error(f"--batch-size {args.batch_size} must be divisible by --grad-accum {args.grad_accum}")
    check_eval_arguments(args, parser)
    lora = lora_config_from_args(args, parser)
    return RunConfig(lora=lora, init_adapter=args.init_adapter,
                     out_dir=args.out, data=args.data, tokenizer=args.tokenizer, steps=args.steps,
                     batch_size=args.batch_size, seed=args.seed, log_every=args.log_every,
                     checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, dim=args.dim,
                     depth=args.depth, heads=args.heads, max_seq_len=args.max_seq_len, init_from=args.init_from,
                     model=args.model,
                     quick=args.quick, progress=not args.no_progress, train=train_config, layout=args.layout,
                     row_len=args.row_len, rows=args.rows, mesh=args.mesh, chat_template=args.chat_template,
                     eval_data=args.eval_data, eval_split=args.eval_split, eval_every=args.eval_every,
                     eval_batch_size=args.eval_batch_size)


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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "inspect-data":
        return inspect_main(args)
    config = run_config_from_args(args, parser)
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
    from dpo_jax.train import NonFiniteError, run

    try:
        summary = run(config)
    except NonFiniteError as err:
        print(f"dpo-jax: {err}", file=sys.stderr)
        return 1
    except (DataError, FileNotFoundError, ValueError, ImportError) as err:  # bad data, paths, checkpoints, extras
        print(f"dpo-jax: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
