"""Steps per second of `dpo-jax train` itself (the CLI, not a benchmark contender), on two runs:

- `demo`: the embedded demo with its defaults (vocab 13, dim 64, depth 2, batch 32);
- `data`: a cpu-small-shaped `--data` run: a word-level tokenizer of 8192 ids, dim 256, depth 4, heads 4,
  batch 8, prompts of 128 and completions of 64-128 tokens (random ids), from random weights.

Each run goes through `python -m dpo_jax train` in a subprocess and reports the run's own `tokens_per_s`
(scored tokens per second, the first (compiling) step excluded) and the wall time of the whole command.
Both runs are seeded, so two commits see the same batches and the ratio of their tokens/s is the ratio of
their steps/s (the demo's steps/s is also given: 32 pairs x 2 x 7 scored tokens per step). Because it only
uses the CLI, the same script measures any commit:

    python -m benchmarks.train_cli --runs demo,data --out /tmp/train-cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

VOCAB = 8192


def write_tokenizer(path: str) -> None:
    """A WordLevel tokenizer.json with ids t0 .. t{VOCAB-3} plus <pad> and </s> (needs `tokenizers`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(VOCAB - 2)}
    vocab["<pad>"], vocab["</s>"] = VOCAB - 2, VOCAB - 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<pad>", "</s>"])
    tokenizer.save(path)


def write_data(path: str, *, pairs: int, prompt_len: int, completion_len: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(f"t{i}" for i in rng.integers(1, VOCAB - 2, size=n))  # noqa: E731
    with open(path, "w") as handle:
        for _ in range(pairs):
            row = {"prompt": text(prompt_len),
                   "chosen": text(int(rng.integers(completion_len // 2, completion_len))),
                   "rejected": text(int(rng.integers(completion_len // 2, completion_len)))}
            handle.write(json.dumps(row) + "\n")


def run(args: list[str], out_dir: str) -> dict:
    command = [sys.executable, "-m", "dpo_jax", "train", "--no-progress", "--out", out_dir, *args]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    with open(os.path.join(out_dir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return {"command": " ".join(command[1:]), "wall_s": round(wall, 2), "steps": summary["steps"],
            "tokens_per_s": summary["tokens_per_s"], "final_loss": summary["loss"],
            "preferred_rate_after": summary.get("preferred_rate_after"), "logged": len(records)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="demo,data")
    parser.add_argument("--data-steps", type=int, default=20)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs.split(","):
            if name == "demo":
                results["demo"] = run([], os.path.join(tmp, "demo"))
                # demo: 32 pairs x (7 + 7) scored tokens per step (6 digits + eos on each side)
                results["demo"]["steps_per_s"] = results["demo"]["tokens_per_s"] / (32 * 14)
            elif name == "data":
                tokenizer, data = os.path.join(tmp, "tokenizer.json"), os.path.join(tmp, "data.jsonl")
                write_tokenizer(tokenizer)
                write_data(data, pairs=64, prompt_len=128, completion_len=128)
                out = os.path.join(tmp, "data-run")
                results["data"] = run(["--data", data, "--tokenizer", tokenizer, "--dim", "256", "--depth", "4",
                                       "--heads", "4", "--max-seq-len", "256", "--batch-size", "8",
                                       "--steps", str(args.data_steps), "--checkpoint-every", "1000"], out)
            else:
                raise SystemExit(f"unknown run {name!r}")
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
