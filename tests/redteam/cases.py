"""The 197 cases of the 2026-11-24 red-team run, one `Case` per row of its table, with what counts as right now.

CLI rows run `dpo-jax train` with the report's small options (`TINY`) unless the row says otherwise; API rows call
`dpo_jax` / `dpo_torch` on tiny models. `then` is the report's verdict on commit 99e4806; `expect` is today's
contract: the refusal's message, or the accepted behaviour and how it is checked.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil

import numpy as np

from tests.redteam import api_calls as api
from tests.redteam.harness import Case, error, ok

TINY = ["--steps", "2", "--dim", "32", "--depth", "1", "--heads", "2", "--max-seq-len", "64", "--batch-size", "4",
        "--no-progress"]


def _strip(argv, *names):
    """`argv` without the options `names` (and their values)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in names:
            skip = True
            continue
        out.append(item)
    return out


def train(data="good.jsonl", *extra, tiny=TINY, out=True):
    """argv(ws) of `dpo-jax train --data ws/data/<data> <tiny> --out ws/runs/<case> <extra>`."""
    def argv(ws):
        files = [] if data is None else ["--data", ws.file(data)]
        options = _strip(tiny, *[item for item in extra if item.startswith("--")])
        return ["train", *files, *options, *(["--out", ws.run_dir()] if out else []), *extra]
    return argv


def base_argv(data):
    return lambda out: ["train", "--data", data, *_strip(TINY, "--steps"), "--steps", "4", "--checkpoint-every", "1",
                        "--out", out]


def with_base_run(mutate=None, data="base.jsonl", name="base"):
    """setup(ws): a copy of a finished 4-step run (checkpoints at every step) at runs/<case>, then `mutate`."""
    def setup(ws):
        base = ws.base_run(name, base_argv(ws.file(data)))
        run_dir = ws.copy_run(base)
        if mutate is not None:
            mutate(run_dir, ws)
    return setup


def resume(*extra):
    return lambda ws: ["train", "--resume", ws.run_dir(), "--no-progress", *extra]


def into_base(*extra, data="good.jsonl"):
    """A fresh command (no --resume) whose --out is a copy of the finished base run."""
    flags = [item for item in extra if item.startswith("--")]
    return lambda ws: ["train", "--data", ws.file(data), *_strip(TINY, *flags), "--out", ws.run_dir(), *extra]


def _checkpoint(run_dir, step):
    return os.path.join(run_dir, "checkpoints", str(step))


def truncate_all(run_dir, ws):
    for path in glob.glob(os.path.join(_checkpoint(run_dir, 4), "**", "*"), recursive=True):
        if os.path.isfile(path):
            open(path, "w").close()


def truncate_data(run_dir, ws):
    for path in glob.glob(os.path.join(_checkpoint(run_dir, 4), "state", "**", "*"), recursive=True):
        if os.path.isfile(path) and os.path.getsize(path) > 1024:
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)


def remove_checkpoints(run_dir, ws):
    shutil.rmtree(os.path.join(run_dir, "checkpoints"))


def flip_data(run_dir, ws):
    with open(ws.file("o46.jsonl"), "w") as handle, open(ws.file("flipped.jsonl")) as flipped:
        handle.write(flipped.read())


def empty_config(run_dir, ws):
    open(os.path.join(run_dir, "run_config.json"), "w").close()


def unknown_key(run_dir, ws):
    path = os.path.join(run_dir, "run_config.json")
    with open(path) as handle:
        config = json.load(handle)
    config["new_option"] = 1
    with open(path, "w") as handle:
        json.dump(config, handle)


def stderr_says(*patterns):
    import re

    def check(case, outcome):
        missing = [p for p in patterns if not re.search(p, outcome.stderr)]
        return f"stderr lacks {missing}: {outcome.stderr[-600:]}" if missing else None
    return check


def stdout_says(text):
    return lambda case, outcome: None if text in outcome.stdout else f"stdout lacks {text!r}"


def _interrupted_step(ws):
    steps = [int(name) for name in os.listdir(os.path.join(ws.run_dir("o22a"), "checkpoints")) if name.isdigit()]
    return max(steps)


def o22b_setup(ws):
    if not os.path.isdir(ws.run_dir("o22a")):
        raise RuntimeError("o22b resumes the run o22a interrupted: run o22a first")
    ws.copy_run(ws.run_dir("o22a"))


def o22b_argv(ws):
    return ["train", "--resume", ws.run_dir(), "--steps", str(_interrupted_step(ws) + 5), "--no-progress"]


def contiguous_metrics(case, outcome):
    summary = json.loads(outcome.stdout)
    with open(os.path.join(summary["run_dir"], "metrics.jsonl")) as handle:
        steps = [json.loads(line)["step"] for line in handle]
    return None if steps == list(range(1, summary["steps"] + 1)) else f"logged steps {steps[:5]}...{steps[-5:]}"


def no_tokenizers_env(ws):
    """PYTHONPATH with a `tokenizers` that cannot be imported first: the [tokenizers] extra is not installed."""
    shim = ws.path("no_tokenizers")
    os.makedirs(os.path.join(shim, "tokenizers"), exist_ok=True)
    with open(os.path.join(shim, "tokenizers", "__init__.py"), "w") as handle:
        handle.write("raise ImportError('No module named tokenizers (simulated: the extra is not installed)')\n")
    from tests.redteam.harness import ROOT

    return {"PYTHONPATH": os.pathsep.join([shim, ROOT])}


def policy_and(*extra):
    flags = [item for item in extra if item.startswith("--")]
    return lambda ws: ["train", "--data", ws.file("good.jsonl"), *_strip(TINY, *flags), "--init-from",
                       ws.file("policy32.safetensors"), "--out", ws.run_dir(), *extra]


def _cli(id, what, then, expect, argv, **kw):
    return Case(id, "CLI", what, then, expect, argv=argv, **kw)


def _api(id, what, then, expect, call, **kw):
    return Case(id, "API", what, then, expect, call=call, **kw)


P = functools.partial
CLEAR, TRACEBACK, SILENT, UNCLEAR, OK = "CLEAR ERROR", "TRACEBACK", "SILENT", "UNCLEAR ERROR", "OK"
ln2 = api.loss_near_ln2

CLI_CASES = [
    _cli("d00", "baseline: 10 good text pairs", OK, ok(), train()),
    _cli("d01", "--data missing file", CLEAR, error(r"not found"), lambda ws: ["train", "--data",
         ws.path("data", "missing.jsonl"), *TINY, "--out", ws.run_dir()]),
    _cli("d02", "--data empty file", CLEAR, error(r"no preference examples|empty"), train("empty.jsonl")),
    _cli("d03", "--data only blank lines", CLEAR, error(r"no preference examples|blank"), train("blank.jsonl")),
    _cli("d04", "--data a directory", CLEAR, error(r"adir.*(dataset|folder|directory)"), train("adir")),
    _cli("d05", "invalid JSON on line 7 of 10", CLEAR, error(r":7: invalid JSON"), train("badjson_line7.jsonl")),
    _cli("d06", "each line a JSON array", CLEAR, error(r":1: .*(object|list)"), train("array_lines.jsonl")),
    _cli("d06b", "whole file one JSON array of objects", CLEAR, error(r":1: .*(object|list)"),
         train("array_whole.jsonl")),
    _cli("d07", "line 1 lacks rejected", CLEAR, error(r":1: .*rejected"), train("missing_rejected.jsonl")),
    _cli("d08", "chosen == rejected on every line", SILENT, error(r"chosen equals? (to )?rejected"),
         train("identical.jsonl")),
    _cli("d09", "empty prompt on every line", OK, ok(), train("empty_prompt.jsonl")),
    _cli("d10", "empty chosen on line 11", CLEAR, error(r":11: .*empty"), train("empty_chosen.jsonl")),
    _cli("d11", "prompt is an int (5)", CLEAR, error(r":1: .*prompt.*int"), train("int_field.jsonl")),
    _cli("d11b", "prompt is null", CLEAR, error(r":1: .*prompt"), train("null_field.jsonl")),
    _cli("d11c", "prompt is an object", CLEAR, error(r":1: .*prompt"), train("dict_field.jsonl")),
    _cli("d12", "nested lists of ids", CLEAR, error(r":1: .*not an integer token id"), train("nested.jsonl")),
    _cli("d13", "float ids [1.0, 2.0]", CLEAR, error(r":1: .*not an integer token id"), train("float_ids.jsonl")),
    _cli("d13b", "float ids [1.5]", CLEAR, error(r":1: .*not an integer token id"), train("float_ids_frac.jsonl")),
    _cli("d14", "bool ids [true, false]", CLEAR, error(r":1: .*not an integer token id"), train("bool_ids.jsonl")),
    _cli("d15", "negative id -3", CLEAR, error(r":1: .*-3.*range"), train("neg_ids.jsonl")),
    _cli("d16", "id 258 >= byte vocab 258", CLEAR, error(r":1: .*258.*range"), train("big_ids.jsonl")),
    _cli("d16b", "id 10**40", CLEAR, error(r":1: .*range"), train("huge_int.jsonl")),
    _cli("d16c", "ids 256/257 (pad/eos) inside prompt and completion", OK, ok(), train("pad_ids.jsonl")),
    _cli("d17", "text prompt, id-list chosen, text rejected", OK, ok(), train("mixed.jsonl")),
    _cli("d17b", "list mixing a string and an int", CLEAR, error(r":1: .*not an integer token id"),
         train("mixed_inlist.jsonl")),
    _cli("d18", "one 1 MB prompt line", OK, ok(), train("1mb.jsonl")),
    # truncation keeps 1 completion token of each, and chosen and rejected start with the same byte: no preference
    # is left (their loss would be ln 2, their gradient 0), so the run refuses the pairs, like o27b and d36
    _cli("d19", "prompt 501 bytes > --max-seq-len 64", OK, error(r"chosen equals? (to )?rejected"),
         train("long_prompt.jsonl")),
    _cli("d19b", "chosen 500 bytes > --max-seq-len 64", OK, ok(), train("long_completion.jsonl")),
    _cli("d20", "CRLF line endings", OK, ok(), train("crlf.jsonl")),
    _cli("d21", "UTF-8 BOM at file start", CLEAR, error(r":1: .*BOM"), train("bom.jsonl")),
    _cli("d22", "invalid UTF-8 bytes on line 4", CLEAR, error(r":4: not valid UTF-8"), train("badutf8.jsonl")),
    _cli("d23", "emoji + CJK text, byte tokenizer", OK, ok(), train("emoji.jsonl")),
    _cli("d24", "conversational (messages) format, no chat template", CLEAR, error(r"chat template"),
         train("conversational.jsonl")),
    _cli("d25", "TRL implicit prompt (no prompt key): supported since 0.2", CLEAR, ok(),
         train("implicit_prompt.jsonl")),
    _cli("d26", "gzip-compressed JSONL: supported since 0.2", CLEAR, ok(), train("good.jsonl.gz")),
    _cli("d28", "extra keys per line", OK, ok(), train("extra_keys.jsonl")),
    _cli("d29", "lone surrogate \\ud800 in text", CLEAR, error(r":1: .*surrogate"), train("lone_surrogate.jsonl")),
    _cli("d30", "NUL char in text", OK, ok(), train("nul.jsonl")),
    _cli("d31", "duplicate rejected key (last = 7)", CLEAR, error(r":1: .*rejected"), train("dup_keys.jsonl")),
    _cli("d32", "NaN literal in id list", CLEAR, error(r":1: .*nan"), train("nan_token.jsonl")),
    _cli("d33", "two objects on one line", CLEAR, error(r":1: invalid JSON"), train("two_per_line.jsonl")),
    _cli("d34", "pretty-printed (multi-line) JSON", CLEAR, error(r":1: invalid JSON"), train("pretty.jsonl")),
    _cli("d35", "1 example, default --batch-size 16", SILENT, error(r"batch.size 16.*1 training pair"),
         train("single.jsonl", tiny=_strip(TINY, "--batch-size"))),
    _cli("o01", "--steps 0", CLEAR, error(r"--steps: must be a positive integer"), train("good.jsonl", "--steps", "0")),
    _cli("o02", "--batch-size 32 with 10 examples", SILENT, error(r"batch.size 32.*10 training pair"),
         train("good.jsonl", "--batch-size", "32")),
    _cli("o03", "--batch-size 0", CLEAR, error(r"--batch-size: must be a positive integer"),
         train("good.jsonl", "--batch-size", "0")),
    _cli("o04", "--beta -1", CLEAR, error(r"--beta"), train("good.jsonl", "--beta", "-1")),
    _cli("o05", "--beta nan", CLEAR, error(r"--beta"), train("good.jsonl", "--beta", "nan")),
    _cli("o05b", "--beta inf", CLEAR, error(r"beta"), train("good.jsonl", "--beta", "inf")),
    _cli("o06", "--lr inf", CLEAR, error(r"--lr"), train("good.jsonl", "--lr", "inf")),
    _cli("o06b", "--lr 10 --steps 3", OK, ok(), train("good.jsonl", "--lr", "10", "--steps", "3")),
    _cli("o07", "--label-smoothing 0.7, sigmoid", CLEAR, error(r"label_smoothing"),
         train("good.jsonl", "--label-smoothing", "0.7")),
    _cli("o07b", "--label-smoothing -0.5", CLEAR, error(r"label.smoothing"),
         train("good.jsonl", "--label-smoothing", "-0.5")),
    _cli("o07c", "--label-smoothing 0.2 with hinge", CLEAR, error(r"label_smoothing is not used"),
         train("good.jsonl", "--label-smoothing", "0.2", "--loss-type", "hinge")),
    _cli("o08", "--grad-accum 3 --batch-size 4", CLEAR, error(r"divisible by --grad-accum 3"),
         train("good.jsonl", "--grad-accum", "3")),
    _cli("o09", "--mesh data=3 on 1 CPU device", CLEAR, error(r"3 devices but 1"), train("good.jsonl", "--mesh",
                                                                                        "data=3")),
    _cli("o10", "--mesh garbage", CLEAR, error(r"--mesh"), train("good.jsonl", "--mesh", "garbage")),
    _cli("o10b", "--mesh data=1,model=1", CLEAR, error(r"unknown mesh axis 'model'"),
         train("good.jsonl", "--mesh", "data=1,model=1")),
    _cli("o10c", "--mesh data=0", CLEAR, error(r"positive integer size"), train("good.jsonl", "--mesh", "data=0")),
    _cli("o11", "--resume non-existent dir", CLEAR, error(r"not a run directory"),
         lambda ws: ["train", "--resume", ws.path("runs", "nope")]),
    _cli("o12", "--resume a dir that is not a run (data/)", CLEAR, error(r"not a run directory"),
         lambda ws: ["train", "--resume", ws.path("data")]),
    _cli("o00", "base run for resume cases (4 steps, ckpt every step)", OK, ok(),
         lambda ws: base_argv(ws.file("good.jsonl"))(ws.run_dir())),
    _cli("o13", "--resume after deleting checkpoints/ (steps 6)", SILENT, error(r"no checkpoint"),
         resume("--steps", "6"), setup=with_base_run(remove_checkpoints)),
    _cli("o14", "--resume after truncating all files of newest ckpt (4) to 0 B", UNCLEAR,
         ok(stderr_says(r"checkpoint 4.*(unreadable|corrupt)", r"step 3")), resume(),
         setup=with_base_run(truncate_all)),
    _cli("o14b", "--resume after truncating only big state data files of ckpt 4", TRACEBACK,
         ok(stderr_says(r"checkpoint 4.*(unreadable|corrupt)", r"step 3")), resume(),
         setup=with_base_run(truncate_data)),
    _cli("o30", "--resume with --lr 1 --beta 5 (other options)", SILENT, error(r"--lr.*--beta|--beta.*--lr"),
         resume("--lr", "1", "--beta", "5"), setup=with_base_run()),
    _cli("o46", "--resume after the data file changed (preferences flipped)", SILENT,
         error(r"o46.jsonl.*changed|changed.*o46.jsonl"), resume("--steps", "6"),
         setup=with_base_run(flip_data, data="o46.jsonl", name="o46")),
    _cli("o20", "--out an existing finished run, --dim 64 (not 32)", UNCLEAR, error(r"holds a run.*--resume"),
         into_base("--dim", "64"), setup=with_base_run()),
    _cli("o20b", "--out an existing finished run, --steps 6, other --lr/--beta", SILENT,
         error(r"holds a run.*--resume"), into_base("--steps", "6", "--lr", "0.5", "--beta", "3"),
         setup=with_base_run()),
    _cli("o20c", "--out an existing finished run with other --data (emoji)", SILENT, error(r"holds a run.*--resume"),
         into_base("--steps", "4", data="emoji.jsonl"), setup=with_base_run()),
    _cli("o21", "--out under a read-only file system (/sys)", TRACEBACK, error(r"cannot create the run directory"),
         lambda ws: ["train", "--data", ws.file("good.jsonl"), *TINY, "--out", "/sys/dpo-jax-redteam/run"]),
    _cli("o23", "--out is an existing regular file", TRACEBACK, error(r"afile.*not a directory"),
         lambda ws: ["train", "--data", ws.file("good.jsonl"), *TINY, "--out", ws.file("afile")]),
    _cli("o15", "--init-from non-existent file", CLEAR, error(r"nope.safetensors"),
         lambda ws: ["train", "--data", ws.file("good.jsonl"), *TINY, "--out", ws.run_dir(), "--init-from",
                     ws.path("data", "nope.safetensors")]),
    _cli("o16", "--init-from a text file named .safetensors", TRACEBACK, error(r"not_safetensors.*not a safetensors"),
         lambda ws: ["train", "--data", ws.file("good.jsonl"), *TINY, "--out", ws.run_dir(), "--init-from",
                     ws.file("not_safetensors.safetensors")]),
    _cli("o17", "--init-from a dim-32 policy with --dim 64 --depth 3", SILENT, error(r"--init-from.*--dim"),
         policy_and("--dim", "64", "--depth", "3")),
    _cli("o17b", "--init-from a dim-32 policy, no --data (demo)", CLEAR, error(r"architecture differs"),
         lambda ws: ["train", "--quick", "--steps", "2", "--no-progress", "--out", ws.run_dir(), "--init-from",
                     ws.file("policy32.safetensors")]),
    _cli("o18", "--tokenizer non-existent file", CLEAR, error(r"tokenizer file not found"),
         train("good.jsonl", "--tokenizer", "/nonexistent/tokenizer.json")),
    _cli("o19", "--tokenizer a text file", TRACEBACK, error(r"tokenizer_text.json.*not a tokenizer"),
         lambda ws: train("good.jsonl", "--tokenizer", ws.file("tokenizer_text.json"))(ws)),
    _cli("o19b", "--tokenizer tokenizer.json without pad/eos", CLEAR, error(r"pad and eos"),
         lambda ws: train("good.jsonl", "--tokenizer", ws.file("tokenizer_nospecial.json"))(ws)),
    _cli("o19c", "--tokenizer valid BPE tokenizer.json (vocab 308)", OK, ok(),
         lambda ws: train("good.jsonl", "--tokenizer", ws.file("tokenizer_bpe.json"))(ws)),
    _cli("o19d", "--tokenizer vocab 308 with --init-from a vocab-258 policy", CLEAR, error(r"vocabulary"),
         lambda ws: policy_and("--tokenizer", ws.file("tokenizer_bpe.json"))(ws)),
    _cli("o19e", "--tokenizer when the tokenizers extra is not installed", TRACEBACK, error(r"pip install"),
         lambda ws: train("good.jsonl", "--tokenizer", ws.file("tokenizer_bpe.json"))(ws), env=no_tokenizers_env,
         subprocess_only=True),
    _cli("o19f", "--tokenizer with the demo (no --data)", SILENT, error(r"--tokenizer.*--data"),
         lambda ws: ["train", "--quick", "--steps", "2", "--no-progress", "--out", ws.run_dir(), "--tokenizer",
                     "/nonexistent/tokenizer.json"]),
    _cli("o24", "--weight-decay -1", SILENT, error(r"--weight-decay"), train("good.jsonl", "--weight-decay", "-1")),
    _cli("o25", "--grad-clip -1", CLEAR, error(r"grad.clip"), train("good.jsonl", "--grad-clip", "-1")),
    _cli("o26", "--ref-sync-alpha 2 --ref-sync-every 1", CLEAR, error(r"ref.sync.alpha"),
         train("good.jsonl", "--ref-sync-alpha", "2", "--ref-sync-every", "1")),
    _cli("o26b", "--ref-sync-alpha 2 without --ref-sync-every", CLEAR, error(r"ref.sync.alpha"),
         train("good.jsonl", "--ref-sync-alpha", "2")),
    _cli("o27", "--max-seq-len 1", SILENT, error(r"--max-seq-len"), train("good.jsonl", "--max-seq-len", "1")),
    _cli("o27b", "--max-seq-len 2: truncation leaves chosen == rejected", SILENT, error(r"chosen equals? (to )?rejected"),
         train("good.jsonl", "--max-seq-len", "2")),
    _cli("o28", "--dim 30 --heads 4", CLEAR, error(r"divisible by --heads"),
         train("good.jsonl", "--dim", "30", "--heads", "4")),
    _cli("o29", "--seed -1", UNCLEAR, error(r"--seed"), train("good.jsonl", "--seed", "-1")),
    _cli("o31", "--num-processes 2 --process-id 5", TRACEBACK, error(r"process.id 5"),
         train("good.jsonl", "--num-processes", "2", "--process-id", "5")),
    _cli("o32", "--coordinator 127.0.0.1:1 --num-processes 2 --process-id 1 --init-timeout 3 (nobody listens)",
         SILENT, error(r"coordinator"), train("good.jsonl", "--coordinator", "127.0.0.1:1", "--num-processes", "2",
                                              "--process-id", "1", "--init-timeout", "3")),
    _cli("o33", "--data a parquet file: supported since 0.2", CLEAR, ok(), train("good.parquet")),
    _cli("o34", "--quick with --data", OK, ok(), train("good.jsonl", "--quick")),
    _cli("o35", "--layout prefix_shared --row-len 4", CLEAR, error(r"row_len=4"),
         train("good.jsonl", "--layout", "prefix_shared", "--row-len", "4")),
    _cli("o36", "--layout packed --rows 64 --row-len 8", CLEAR, error(r"row_len=8"),
         train("good.jsonl", "--layout", "packed", "--rows", "64", "--row-len", "8")),
    _cli("o37", "--warmup-steps 1000 --schedule cosine (> steps)", OK, ok(),
         train("good.jsonl", "--warmup-steps", "1000", "--schedule", "cosine")),
    _cli("o38", "--beta 1e30", CLEAR, error(r"non-finite value at step 1", code=1),
         train("good.jsonl", "--beta", "1e30")),
    _cli("o39", "--keep-checkpoints 0", CLEAR, error(r"--keep-checkpoints"),
         train("good.jsonl", "--keep-checkpoints", "0")),
    _cli("o40", "--layout packed --grad-accum 2", CLEAR, error(r"grad_accum 1"),
         train("good.jsonl", "--layout", "packed", "--grad-accum", "2")),
    _cli("o22a", "SIGINT 1 s into a 3000-step run", TRACEBACK,
         error(r"interrupted at step \d+.*dpo-jax train --resume", code=130),
         train("good.jsonl", "--steps", "3000", "--checkpoint-every", "25"), interrupt_after=1.0),
    _cli("o22b", "--resume after SIGINT, 5 steps more", OK, ok(contiguous_metrics), o22b_argv, setup=o22b_setup),
    _cli("d36", "prompt 50 B + completions sharing a 56-B prefix, --max-seq-len 96: truncation leaves chosen == "
         "rejected", SILENT, error(r"chosen equals? (to )?rejected"), train("shared_prefix.jsonl", "--max-seq-len", "96")),
    _cli("o02b", "--batch-size 5000 with 10 examples", SILENT, error(r"batch.size 5000.*10 training pair"),
         train("good.jsonl", "--batch-size", "5000")),
    _cli("o41", "--resume with --mesh data=2 on 1 device", CLEAR, error(r"2 devices but 1"),
         resume("--mesh", "data=2"), setup=with_base_run()),
    _cli("o42", "python -m dpo_jax train --help", OK, ok(stdout_says("--init-from")), lambda ws: ["train", "--help"]),
    _cli("o43", "--resume a run whose run_config.json is empty (0 B)", TRACEBACK,
         error(r"run_config.json.*(empty|not valid JSON)"), resume(), setup=with_base_run(empty_config)),
    _cli("o44", "--resume a run whose run_config.json has an unknown key", TRACEBACK, error(r"unknown.*new_option"),
         resume(), setup=with_base_run(unknown_key)),
    _cli("o45", "--resume a finished 4-step run without --steps", OK, ok(), resume(), setup=with_base_run()),
]

_x = api.batch()


def _bad_ids(value, where=(1, 6)):
    seq = _x["preferred_seq"].copy()
    seq[where] = value
    return seq


API_CASES = [
    _api("a01", "dpo_loss, float token arrays", CLEAR, error(r"TypeError: preferred_seq must hold integer"),
         P(api.dpo, preferred_seq=_x["preferred_seq"].astype(np.float32))),
    _api("a02", "dpo_loss, id 256 >= vocab 256", CLEAR, error(r"token id 256 .*outside"),
         P(api.dpo, preferred_seq=_bad_ids(256))),
    _api("a03", "dpo_loss, negative id", CLEAR, error(r"token id -1 .*outside"), P(api.dpo, preferred_seq=_bad_ids(-1))),
    _api("a04", "dpo_loss, prompt_mask shape [2,11] for [2,12]", CLEAR, error(r"prompt_mask must have shape"),
         P(api.dpo, prompt_mask=_x["prompt_mask"][:, :11])),
    _api("a05", "dpo_loss, prompt_mask int32", CLEAR, error(r"TypeError: prompt_mask must be a bool"),
         P(api.dpo, prompt_mask=_x["prompt_mask"].astype(np.int32))),
    _api("a06", "dpo_loss, all-prompt rows", CLEAR, error(r"no scored token"),
         P(api.dpo, prompt_mask=np.ones_like(_x["prompt_mask"]))),
    _api("a07", "dpo_loss, length 20 > max_seq_len 16 + 1", CLEAR, error(r"too long"),
         lambda ws: api.dpo(ws, **api.batch(length=20))),
    _api("a08", "dpo_loss, batch size 0", SILENT, error(r"at least one pair"),
         lambda ws: api.dpo(ws, **api.batch(batch_size=0))),
    _api("a09", "dpo_loss, preferred batch 2 vs unpreferred batch 3", CLEAR, error(r"same shape"),
         P(api.dpo, unpreferred_seq=api.batch(batch_size=3)["unpreferred_seq"])),
    _api("a09b", "dpo_loss, 1-D sequences", CLEAR, error(r"2-D"),
         P(api.dpo, preferred_seq=_x["preferred_seq"][0], unpreferred_seq=_x["unpreferred_seq"][0],
           prompt_mask=_x["prompt_mask"][0])),
    _api("a09c", "dpo_loss, prompt_mask as a Python list", OK, ok(ln2), P(api.dpo, prompt_mask=_x["prompt_mask"].tolist())),
    _api("a09d", "dpo_loss, prompt_mask=None", TRACEBACK, error(r"prompt_mask"), P(api.dpo, prompt_mask=None)),
    _api("a09e", "dpo_loss, beta=0", CLEAR, error(r"beta must be"), P(api.dpo, beta=0.0)),
    _api("a09f", "dpo_loss, beta=nan", CLEAR, error(r"beta must be"), P(api.dpo, beta=float("nan"))),
    _api("a09g", "dpo_loss, beta='0.1' (str)", CLEAR, error(r"beta must be"), P(api.dpo, beta="0.1")),
    _api("a09h", "dpo_loss, ReferenceLogps of batch 1 for a batch of 2", SILENT, error(r"ReferenceLogps.*shape"),
         lambda ws: api.dpo(ws, reference=__import__("dpo_jax").ReferenceLogps(np.zeros(1), np.zeros(1)))),
    _api("a09i", "dpo_loss, ReferenceLogps containing NaN", OK, ok(api.nan_loss),
         lambda ws: api.dpo(ws, reference=__import__("dpo_jax").ReferenceLogps(np.full(2, np.nan), np.zeros(2)))),
    _api("a09j", "dpo_loss, reference=None with sigmoid", CLEAR, error(r"needs a reference"),
         lambda ws: api.dpo(ws, reference=None)),
    # left padding is told by pad tokens (an explicit mask may drop any position, x-transformers accepts that)
    _api("a09k", "dpo_loss(pad_id=0), left padding (leading pads, seq masks False there)", SILENT,
         error(r"left padding"), lambda ws: api.dpo(ws, pad_id=0, **api.left_padded())),
    _api("a09l", "dpo_loss, preferred_seq_mask with a hole", OK, ok(api.finite_loss),
         P(api.dpo, preferred_seq_mask=np.arange(api.T)[None].repeat(api.B, 0) != 8)),
    _api("a09m", "dpo_loss, typo keyword reductoin='sum'", CLEAR, error(r"reductoin"), P(api.dpo, reductoin="sum")),
    _api("a10", "dpo_loss, reference vocab 128 < policy 256, ids up to 255", CLEAR, error(r"vocabulary \[0, 128\)"),
         lambda ws: api.dpo(ws, reference=api.jax_model(num_tokens=128), preferred_seq=_bad_ids(217))),
    _api("a11", "dpo_loss, reference max_seq_len 8 < policy 16", CLEAR, error(r"reference's max_seq_len is 8"),
         lambda ws: api.dpo(ws, reference=api.jax_model(max_seq_len=8))),
    _api("a12", "dpo_loss, policy = the torch model (forgot from_torch)", TRACEBACK, error(r"policy .*PyTorch.*from_torch"),
         lambda ws: api.dpo(ws, policy=api.torch_model())),
    _api("a13", "dpo_loss, reference = the torch model", TRACEBACK, error(r"reference .*PyTorch.*from_torch"),
         lambda ws: api.dpo(ws, reference=api.torch_model())),
    _api("a14", "dpo_loss, torch tensors as inputs", OK, ok(ln2),
         lambda ws: api.dpo(ws, **{k: __import__("torch").from_numpy(v) for k, v in api.batch().items()})),
    _api("j00", "jit(dpo_loss), valid batch", OK, ok(ln2), api.jit_loss),
    _api("j01", "jit, float token arrays", TRACEBACK, error(r"TypeError: preferred_seq must hold integer"),
         P(api.jit_loss, preferred_seq=_x["preferred_seq"].astype(np.float32))),
    _api("j02", "jit, ids 10**6 >= vocab: NaN, and checks='raise' names the row", SILENT,
         ok(api.nan_then_raise_check(r"preferred_seq row 1 .*1000000.*vocabulary")),
         P(api.jit_nan_then_raise, preferred_seq=_bad_ids(10 ** 6))),
    _api("j03", "jit, negative ids (-5): NaN, and checks='raise' names the row", SILENT,
         ok(api.nan_then_raise_check(r"preferred_seq row 1 .*-5.*vocabulary")),
         P(api.jit_nan_then_raise, preferred_seq=_bad_ids(-5))),
    _api("j04", "jit, prompt_mask int32", SILENT, error(r"TypeError: prompt_mask must be a bool"),
         P(api.jit_loss, prompt_mask=_x["prompt_mask"].astype(np.int32))),
    _api("j05", "jit, prompt_mask wrong shape", TRACEBACK, error(r"prompt_mask must have shape"),
         P(api.jit_loss, prompt_mask=_x["prompt_mask"][:, :11])),
    _api("j06", "jit, all-prompt rows: NaN, and checks='raise' names the row", SILENT,
         ok(api.nan_then_raise_check(r"row 0 has no scored token")),
         P(api.jit_nan_then_raise, prompt_mask=np.ones_like(_x["prompt_mask"]))),
    _api("j07", "jit, length 40 > max_seq_len 16", SILENT, error(r"too long"),
         lambda ws: api.jit_loss(ws, **api.batch(length=40))),
    _api("j08", "jit, batch size 0", SILENT, error(r"at least one pair"),
         lambda ws: api.jit_loss(ws, **api.batch(batch_size=0))),
    _api("j09", "jit, batch 2 vs 3", TRACEBACK, error(r"same shape"),
         P(api.jit_loss, unpreferred_seq=api.batch(batch_size=3)["unpreferred_seq"])),
]

_UNSUPPORTED = [
    ("c01", "attn_sparse_topk=4", dict(attn_sparse_topk=4), "sparse_topk"),
    ("c02", "shift_tokens=1", dict(shift_tokens=1), "shift_tokens"),
    ("c03", "attn_dropout=0.1", dict(attn_dropout=0.1), "dropout"),
    ("c03b", "ff_relu_squared=True", dict(ff_relu_squared=True), "relu_squared"),
    ("c03c", "attn_gate_values=True", dict(attn_gate_values=True), "gate_values|gate"),
    ("c03d", "use_dynamic_tanh=True", dict(use_dynamic_tanh=True), "dynamic_tanh|DynamicTanh|norm"),
    ("c03e", "attn_softclamp_logits=True", dict(attn_softclamp_logits=True), "softclamp"),
    ("c03f", "rotary_pos_emb, rotary_xpos=True", dict(rotary_pos_emb=True, rotary_xpos=True), "xpos"),
    ("c03g", "attn_head_scale=True", dict(attn_head_scale=True), "head_scale"),
    ("c03h", "layer_dropout=0.1", dict(layer_dropout=0.1), "layer_dropout"),
    ("c03i", "ff_post_act_ln=True", dict(ff_post_act_ln=True), "post_act_ln"),
    ("c03j", "rotary_pos_emb, rotary_emb_dim=8", dict(rotary_pos_emb=True, rotary_emb_dim=8), "rotary"),
    ("c03k", "attn_value_dim_head=8", dict(attn_value_dim_head=8), "value_dim_head"),
    ("c03m", "TransformerWrapper(emb_dropout=0.1)", dict(emb_dropout=0.1), "emb_dropout|dropout"),
    ("c03n", "TransformerWrapper(logits_dim=10)", dict(logits_dim=10), "logits_dim"),
    ("c03o", "TransformerWrapper(scaled_sinu_pos_emb=True)", dict(scaled_sinu_pos_emb=True), "sinu"),
]


def _eval_dropout_model(ws):
    model = api.torch_model(ff_dropout=0.1)
    model.eval()
    return api.from_torch_call(ws, model=model)


def _torch_other(kind):
    def call(ws):
        import torch
        from x_transformers import Decoder, Encoder, TransformerWrapper

        model = {"linear": lambda: torch.nn.Linear(4, 4), "decoder": lambda: Decoder(dim=32, depth=1, heads=2),
                 "encoder": lambda: TransformerWrapper(num_tokens=api.V, max_seq_len=16,
                                                       attn_layers=Encoder(dim=32, depth=1, heads=2)),
                 "string": lambda: "gpt2"}[kind]()
        return api.from_torch_call(ws, model=model)
    return call


def _bf16_matches_float32(case, outcome):
    return None if outcome.value < 1e-5 else f"bfloat16 model converted with logits {outcome.value} off float32"


def _bf16_conversion(ws):
    """from_torch on a bfloat16 TransformerWrapper: its weights exactly in float32 (logits vs the float32 copy)."""
    import torch

    from dpo_jax import from_torch

    bf16 = api.torch_model(dtype=torch.bfloat16)
    converted = from_torch(bf16)
    reference = from_torch(bf16.float())
    tokens = api.batch()["preferred_seq"]
    return float(np.abs(np.asarray(converted(tokens)) - np.asarray(reference(tokens))).max())


def _to_torch_mismatch(ws):
    from dpo_jax import to_torch

    to_torch(api.jax_model(dim=32), api.torch_model().__class__(
        num_tokens=api.V, max_seq_len=16, attn_layers=__import__("x_transformers").Decoder(dim=64, depth=1, heads=2)))


def _mode_check(case, outcome):
    saved, plain = outcome.value
    return None if saved == plain else f"save_safetensors wrote {saved}, open() {plain}"


def _run_files_modes(case, outcome):
    return None


def _custom_module():
    import torch

    class Lookup(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(api.V, api.V)

        def forward(self, tokens):
            return self.emb(tokens)
    return Lookup()


def _seq(length):
    return api.batch(length=length)


CONVERSION_CASES = [
    *[_api(id, f"from_torch on Decoder({what})", CLEAR, error(rf"NotImplementedError: .*({pattern})"),
           P(api.from_torch_call, **options)) for id, what, options, pattern in _UNSUPPORTED],
    _api("c03l", "from_torch on Decoder(ff_dropout=0.1), model.eval()", CLEAR,
         error(r"NotImplementedError: .*dropout"), _eval_dropout_model),
    _api("c04", "from_torch on torch.nn.Linear", CLEAR, error(r"NotImplementedError|TypeError"), _torch_other("linear")),
    _api("c04b", "from_torch on a bare Decoder", CLEAR, error(r"NotImplementedError|TypeError"),
         _torch_other("decoder")),
    _api("c04c", "from_torch on TransformerWrapper(Encoder)", CLEAR, error(r"NotImplementedError: .*(causal|Encoder)"),
         _torch_other("encoder")),
    _api("c04d", "from_torch on the string 'gpt2'", CLEAR, error(r"NotImplementedError|TypeError"),
         _torch_other("string")),
    _api("c03p", "from_torch on a float64 model, verify=True", OK, ok(),
         lambda ws: api.from_torch_call(ws, model=api.torch_model(dtype=__import__("torch").float64))),
    _api("c03q", "from_torch on a bfloat16 model: converted exactly (float32 weights)", TRACEBACK,
         ok(_bf16_matches_float32), _bf16_conversion),
    _api("c05", "to_torch into a dim-64 model", CLEAR, error(r"architecture mismatch"), _to_torch_mismatch),
    _api("s1", "load_safetensors, file truncated to half", CLEAR, error(r"s1.safetensors.*not a safetensors"),
         lambda ws: api.load(api.safetensors_file(ws, "s1.safetensors", api.truncate_half))),
    _api("s2", "load_safetensors, random-bytes file", CLEAR, error(r"s2.safetensors.*not a safetensors"),
         lambda ws: api.load(api.safetensors_file(ws, "s2.safetensors",
                                                  lambda p: open(p, "wb").write(os.urandom(64))))),
    _api("s3", "load_safetensors, last 100 bytes of tensor data overwritten", SILENT, error(r"s3.safetensors.*checksum"),
         lambda ws: api.load(api.safetensors_file(ws, "s3.safetensors", api.overwrite_tail))),
    _api("s4", "load_safetensors, metadata dim edited 32 -> 48", CLEAR, error(r"shape"),
         lambda ws: api.load(api.safetensors_file(ws, "s4.safetensors", api.edit_metadata_dim))),
    _api("s5", "load_safetensors, an extra tensor", CLEAR, error(r"unexpected \['extra.weight'\]"),
         lambda ws: api.load(api.safetensors_file(ws, "s5.safetensors", P(api.resave, extra_tensor=True)))),
    _api("s6", "load_safetensors, no dpo_jax_config metadata", CLEAR, error(r"dpo_jax_config"),
         lambda ws: api.load(api.safetensors_file(ws, "s6.safetensors", P(api.resave, drop_metadata=True)))),
    _api("s7", "load_safetensors, float16 tensors", OK, ok(),
         lambda ws: api.load(api.safetensors_file(ws, "s7.safetensors", P(api.resave, dtype=np.float16)))),
    _api("s8", "load_safetensors, missing path", CLEAR, error(r"FileNotFoundError"),
         lambda ws: api.load(ws.path("data", "missing.safetensors"))),
    _api("s9", "save_safetensors into a read-only dir (/sys)", CLEAR, error(r"OSError|PermissionError"),
         lambda ws: __import__("dpo_jax").save_safetensors(api.jax_model(), "/sys/dpo-jax-redteam.safetensors")),
    _api("s10", "permissions of save_safetensors' file under umask 022 (0644 like open())", SILENT,
         ok(_mode_check), api.file_mode_under_umask),
    _api("t01", "dpo_torch.DPO(beta=0)", CLEAR, error(r"beta must be"), P(api.torch_dpo, construct=dict(beta=0.0))),
    _api("t02", "DPO(torch.nn.Linear(4,4)), then forward", TRACEBACK, error(r"TypeError: .*causal LM"),
         lambda ws: api.torch_dpo(ws, model=__import__("torch").nn.Linear(4, 4))),
    _api("t02c", "DPO(bare Decoder), forward", TRACEBACK, error(r"TypeError: .*TransformerWrapper"),
         lambda ws: api.torch_dpo(ws, model=__import__("x_transformers").Decoder(dim=32, depth=1, heads=2))),
    _api("t02d", "DPO(a custom token->logits module), forward", OK, ok(ln2),
         lambda ws: api.torch_dpo(ws, model=_custom_module())),
    _api("t03", "DPO forward, shapes [2,12] vs [2,10]", CLEAR, error(r"same shape"),
         P(api.torch_dpo, unpreferred_seq=_x["unpreferred_seq"][:, :10])),
    _api("t03c", "DPO forward, prompt_mask [2,11]", CLEAR, error(r"prompt_mask must have"),
         P(api.torch_dpo, prompt_mask=_x["prompt_mask"][:, :11])),
    _api("t04", "DPO forward, prompt_mask covers everything", CLEAR, error(r"no scored"),
         P(api.torch_dpo, prompt_mask=np.ones_like(_x["prompt_mask"]))),
    _api("t05", "DPO forward, float tokens", CLEAR, error(r"integer token ids"),
         P(api.torch_dpo, preferred_seq=_x["preferred_seq"].astype(np.float32))),
    _api("t06", "DPO forward, id 256 >= vocab", CLEAR, error(r"token id 256 .*outside"),
         P(api.torch_dpo, preferred_seq=_bad_ids(256))),
    _api("t07", "DPO forward, length 20 > max_seq_len + 1", CLEAR, error(r"too long"),
         lambda ws: api.torch_dpo(ws, **_seq(20))),
    _api("t08", "DPO forward, batch size 0", SILENT, error(r"at least one pair"),
         lambda ws: api.torch_dpo(ws, **api.batch(batch_size=0))),
    _api("t09", "DPO forward, prompt_mask int64", CLEAR, error(r"bool"),
         P(api.torch_dpo, prompt_mask=_x["prompt_mask"].astype(np.int64))),
    _api("t11", "DPO forward, reference_logps of batch 1 for batch 2", CLEAR, error(r"reference_logps"),
         lambda ws: api.torch_dpo(ws, reference_logps=tuple(__import__("torch").zeros(1) for _ in range(2)))),
    _api("t12", "DPO(pad_id=0), completion all pad", CLEAR, error(r"no scored"),
         P(api.torch_dpo, construct=dict(pad_id=0),
           unpreferred_seq=np.where(np.arange(api.T) < api.P, _x["unpreferred_seq"], 0))),
    _api("t13", "DPO(loss_type='dpo')", CLEAR, error(r"unknown loss_type"),
         P(api.torch_dpo, construct=dict(loss_type="dpo"))),
    _api("t14", "DPO on a float64 model", OK, ok(ln2),
         lambda ws: api.torch_dpo(ws, model=api.torch_model(dtype=__import__("torch").float64))),
    _api("t15", "DPO(pad_id=0), left padding", SILENT, error(r"left padding"),
         lambda ws: api.torch_dpo(ws, construct=dict(pad_id=0),
                                  **{k: v for k, v in api.left_padded().items() if not k.endswith("seq_mask")})),
]

CASES = {case.id: case for case in CLI_CASES + API_CASES + CONVERSION_CASES}
TARGET_ROWS = [case.id for case in CASES.values() if case.then in (TRACEBACK, SILENT, UNCLEAR)]
