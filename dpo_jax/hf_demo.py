"""The pretrained-model recipe on a real architecture, offline: `python -m dpo_jax.hf_demo`.

The embedded sorting task of `dpo_jax.demo` (prompts of distinct digits and '>', completions sorted ascending or
descending), with a Llama-family model (`LlamaForCausalLM`: RMSNorm, rotary GQA attention, SwiGLU) in place of
the x-transformers one, and the model handed over as a Hugging Face directory:

1. `prepare --out DIR`: supervised training of a small Llama on both orders 50/50 (so it sorts ascending about
   half the time), saved with `save_pretrained` as `DIR/sft_model` together with a `tokenizer.json` for the
   task's characters, and the preference pairs (ascending over descending, as text) as `DIR/pairs.jsonl`;
2. `dpo-jax train --model DIR/sft_model --data DIR/pairs.jsonl --out DIR/run ...` (printed by `prepare`): DPO
   from the checkpoint, which writes `DIR/run/hf_policy`;
3. `evaluate --out DIR`: the share of sampled completions (T=1, held-out prompts) that are the ascending sort,
   for the SFT model and for the DPO policy, both read back with `from_pretrained`.

`python -m dpo_jax.hf_demo [--out DIR] [--quick] [--lora-r R]` runs the three steps (the CLI in this process) and
prints the before / after table; `DIR/summary.json` keeps it. With `--lora-r R`, step 2 trains rank-R LoRA
adapters on every linear layer but the head (alpha 2R, the learning rate `LORA_LEARNING_RATE`: adapters start at
zero and need a larger step than full weights), the reference being the adapter-off SFT model, and writes the PEFT
directory `DIR/run/adapter`; step 3 reads it back onto the SFT model with `load_adapter` (what
`peft.PeftModel.from_pretrained(sft_model, DIR/run/adapter)` loads in torch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpo_jax import cli
from dpo_jax.demo import (DEMO_RECIPE, EOS_ID, FULL_SETTINGS, PAD_ID, QUICK_SETTINGS, SEP_ID, VOCAB_SIZE, DemoSettings,
                          sampled_rates, sft_batches, split_prompts, train_reference)
from dpo_jax.models.hf.checkpoint import write_config
from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM
from dpo_jax.models.lora import load_adapter
from dpo_jax.models.pretrained import from_pretrained, save_pretrained
from dpo_jax.train.outputs import ADAPTER_DIR, HF_POLICY_DIR

__all__ = ["prepare", "evaluate", "main", "llama_config"]

UNK_ID = VOCAB_SIZE  # the tokenizer's one extra token: any character outside the task
SFT_DIR, PAIRS_FILE, RUN_DIR, SUMMARY_FILE = "sft_model", "pairs.jsonl", "run", "summary.json"
LORA_LEARNING_RATE = 3e-4  # the DPO recipe's 1e-4 is for full weights; adapters starting at zero move slower


def llama_config(settings: DemoSettings) -> LlamaConfig:
    """A Llama-shaped model at the demo's size: GQA (4 query, 2 kv heads), SwiGLU, RoPE, untied head."""
    metadata = (("bos_token_id", "null"), ("eos_token_id", str(EOS_ID)), ("pad_token_id", str(PAD_ID)))
    return LlamaConfig(vocab_size=VOCAB_SIZE + 1, hidden_size=settings.dim, intermediate_size=176,
                       num_hidden_layers=settings.depth, num_attention_heads=settings.heads,
                       num_key_value_heads=settings.heads // 2, max_position_embeddings=32, tie_word_embeddings=False,
                       metadata=metadata)


def write_tokenizer(directory: str) -> None:
    """tokenizer.json (one token per character: digits, '>', eos '</s>', pad '<pad>', unknown '<unk>') and the
    tokenizer_config.json / generation_config.json naming the special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {str(d): d for d in range(10)}
    vocab.update({">": SEP_ID, "</s>": EOS_ID, "<pad>": PAD_ID, "<unk>": UNK_ID})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in ("</s>", "<pad>", "<unk>")])
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    write_config(directory, {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "<pad>",
                             "unk_token": "<unk>", "model_max_length": 32}, "tokenizer_config.json")
    write_config(directory, {"eos_token_id": EOS_ID, "pad_token_id": PAD_ID}, "generation_config.json")


def _digits(ids) -> str:
    return "".join(">" if int(i) == SEP_ID else str(int(i)) for i in ids)


def prepare(out: str, *, quick: bool = False, seed: int = 0) -> dict:
    """Step 1: the SFT model as a Hugging Face directory, and the preference pairs as text."""
    settings = QUICK_SETTINGS if quick else FULL_SETTINGS
    rng = np.random.default_rng(seed)
    train_prompts, _ = split_prompts(rng, settings)
    model = LlamaForCausalLM(llama_config(settings), rngs=nnx.Rngs(seed))
    began = time.perf_counter()
    loss = train_reference(model, sft_batches(rng, train_prompts, settings.sft_steps, settings.sft_batch_size),
                           settings.num_digits + 1, settings.sft_learning_rate)
    sft_seconds = time.perf_counter() - began
    model_dir = os.path.join(out, SFT_DIR)
    save_pretrained(model, model_dir)
    write_tokenizer(model_dir)
    with open(os.path.join(out, PAIRS_FILE), "w") as handle:
        for prompt in train_prompts:
            digits = np.sort(prompt[:-1])
            handle.write(json.dumps({"prompt": _digits(prompt), "chosen": _digits(digits),
                                     "rejected": _digits(digits[::-1])}) + "\n")
    return {"sft_seconds": sft_seconds, "sft_final_loss": loss, "pairs": len(train_prompts)}


def train_command(out: str, *, quick: bool = False, lora_r: int | None = None) -> list[str]:
    """Step 2: the `dpo-jax train` arguments (the demo's DPO recipe: sigmoid, summed log-probs, beta 1), with
    rank-`lora_r` adapters (alpha 2 r, `LORA_LEARNING_RATE`) when given."""
    settings = QUICK_SETTINGS if quick else FULL_SETTINGS
    steps = DEMO_RECIPE["quick_steps"] if quick else DEMO_RECIPE["steps"]
    learning_rate = DEMO_RECIPE["learning_rate"] if lora_r is None else LORA_LEARNING_RATE
    lora = [] if lora_r is None else ["--lora-r", str(lora_r), "--lora-alpha", str(2 * lora_r)]
    return ["train", "--model", os.path.join(out, SFT_DIR), "--data", os.path.join(out, PAIRS_FILE),
            "--out", os.path.join(out, RUN_DIR), "--steps", str(steps), "--batch-size", str(DEMO_RECIPE["batch_size"]),
            "--beta", str(DEMO_RECIPE["beta"]), "--reduction", DEMO_RECIPE["reduction"],
            "--lr", str(learning_rate), *lora, "--max-seq-len", str(2 * settings.num_digits + 2),
            "--log-every", "25", "--no-progress"]


def trained_policy(out: str):
    """The run's policy read back: `run/hf_policy`, or the SFT model with the adapters of `run/adapter`."""
    adapter_dir = os.path.join(out, RUN_DIR, ADAPTER_DIR)
    if os.path.isdir(adapter_dir):
        return load_adapter(from_pretrained(os.path.join(out, SFT_DIR), dtype=jnp.float32), adapter_dir)
    return from_pretrained(os.path.join(out, RUN_DIR, HF_POLICY_DIR), dtype=jnp.float32)


def evaluate(out: str, *, quick: bool = False, seed: int = 0) -> dict:
    """Step 3: sampled preferred / valid rates of the SFT model and of the DPO policy on held-out prompts."""
    settings = QUICK_SETTINGS if quick else FULL_SETTINGS
    _, eval_prompts = split_prompts(np.random.default_rng(seed), settings)
    result = {}
    for name, model in (("before", from_pretrained(os.path.join(out, SFT_DIR), dtype=jnp.float32)),
                        ("after", trained_policy(out))):
        rates = sampled_rates(model, eval_prompts, num_digits=settings.num_digits, seed=seed)
        result.update({f"{key}_{name}": value for key, value in rates.items()})
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_jax.hf_demo", description=__doc__.split("\n")[0])
    parser.add_argument("step", nargs="?", choices=("all", "prepare", "evaluate"), default="all")
    parser.add_argument("--out", default="hf_demo", help="working directory (default: hf_demo)")
    parser.add_argument("--quick", action="store_true", help="4-digit prompts, shorter SFT and DPO (CI)")
    parser.add_argument("--lora-r", type=int, metavar="R", help="DPO trains rank-R LoRA adapters (writes run/adapter)")
    args = parser.parse_args(argv)
    if args.lora_r is not None and args.lora_r < 1:
        parser.error(f"--lora-r must be a positive int, got {args.lora_r}")
    os.makedirs(args.out, exist_ok=True)
    summary = {}
    if args.step in ("all", "prepare"):
        summary.update(prepare(args.out, quick=args.quick))
        print("dpo-jax " + " ".join(train_command(args.out, quick=args.quick, lora_r=args.lora_r)))
    if args.step == "all":
        began = time.perf_counter()
        status = cli.main(train_command(args.out, quick=args.quick, lora_r=args.lora_r))
        if status:
            return status
        summary["dpo_seconds"] = time.perf_counter() - began
    if args.step in ("all", "evaluate"):
        summary.update(evaluate(args.out, quick=args.quick))
        print(f"preferred rate (sampled, T=1, held-out prompts): before DPO {summary['preferred_rate_before']:.3f}, "
              f"after {summary['preferred_rate_after']:.3f} (valid sorts {summary['valid_rate_before']:.3f} -> "
              f"{summary['valid_rate_after']:.3f})")
        with open(os.path.join(args.out, SUMMARY_FILE), "w") as handle:
            json.dump(summary, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
