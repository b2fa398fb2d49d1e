"""The red-team cases' input files, each written on first use by `Workspace.file(name)`."""

from __future__ import annotations

import gzip
import json
import os


def good_records(count=10):
    """Short text pairs; chosen and rejected start with the same character (a 1-byte completion makes them equal)."""
    return [{"prompt": f"Q{i}: say something", "chosen": f" thanks, friend {i}!", "rejected": f" go away {i}"}
            for i in range(count)]


def _jsonl(records):
    return "".join(json.dumps(record) + "\n" for record in records)


def _text(content):
    def write(path, ws):
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(content() if callable(content) else content)
    return write


def _bytes(content):
    def write(path, ws):
        with open(path, "wb") as handle:
            handle.write(content() if callable(content) else content)
    return write


def _with_line(number, line, count=10):
    """Good records, with line `number` (from 1) replaced by `line` (raw text)."""
    def content():
        lines = [json.dumps(record) for record in good_records(count)]
        lines[number - 1] = line
        return "\n".join(lines) + "\n"
    return _text(content)


def _first_field(**fields):
    """Good records whose first record has `fields` replaced."""
    def content():
        records = good_records()
        records[0] = dict(records[0], **fields)
        return _jsonl(records)
    return _text(content)


def _every(**fields):
    return _text(lambda: _jsonl([dict(record, **fields) for record in good_records()]))


def _directory(path, ws):
    os.makedirs(path)


def _gzip(path, ws):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(_jsonl(good_records()))


def _parquet(path, ws):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = good_records()
    pq.write_table(pa.table({key: [r[key] for r in records] for key in ("prompt", "chosen", "rejected")}), path)


def _shared_prefix_completions():
    """Prompt 50 bytes, completions sharing their first 56 bytes: cut to --max-seq-len 96 they are equal."""
    shared = "x" * 56
    return _jsonl([{"prompt": f"{i:02d}" + "p" * 48, "chosen": shared + "good", "rejected": shared + "bad"}
                   for i in range(10)])


def _flipped(records):
    return [dict(r, chosen=r["rejected"], rejected=r["chosen"]) for r in records]


def _bpe_tokenizer(special_tokens):
    def write(path, ws):
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=308, special_tokens=special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        texts = [r[key] for r in good_records() for key in ("prompt", "chosen", "rejected")] * 20
        tokenizer.train_from_iterator(texts, trainer)
        tokenizer.save(path)
    return write


def _policy_file(path, ws):
    """A dim-32, depth-1 policy for the byte vocabulary (258 ids), as `dpo-jax train` writes one."""
    from flax import nnx

    from dpo_jax.models.x_transformers import Transformer, TransformerConfig, save_safetensors

    config = TransformerConfig(num_tokens=258, max_seq_len=64, dim=32, depth=1, heads=2, attn_dim_head=16)
    save_safetensors(Transformer(config, rngs=nnx.Rngs(0)), path)


WRITERS = {
    "good.jsonl": _text(lambda: _jsonl(good_records())),
    "base.jsonl": _text(lambda: _jsonl(good_records())),
    "o46.jsonl": _text(lambda: _jsonl(good_records())),
    "flipped.jsonl": _text(lambda: _jsonl(_flipped(good_records()))),
    "empty.jsonl": _text(""),
    "blank.jsonl": _text("\n   \n\t\n"),
    "adir": _directory,
    "badjson_line7.jsonl": _with_line(7, "{not json"),
    "array_lines.jsonl": _text('["a", "b", "c"]\n' * 10),
    "array_whole.jsonl": _text(lambda: json.dumps(good_records()) + "\n"),
    "missing_rejected.jsonl": _with_line(1, json.dumps({"prompt": "a", "chosen": "b"})),
    "identical.jsonl": _text(lambda: _jsonl([dict(r, rejected=r["chosen"]) for r in good_records()])),
    "empty_prompt.jsonl": _every(prompt=""),
    "empty_chosen.jsonl": _with_line(11, json.dumps({"prompt": "a", "chosen": "", "rejected": "c"}), count=12),
    "int_field.jsonl": _first_field(prompt=5),
    "null_field.jsonl": _first_field(prompt=None),
    "dict_field.jsonl": _first_field(prompt={"a": 1}),
    "nested.jsonl": _first_field(prompt=[[1, 2], [3]]),
    "float_ids.jsonl": _first_field(prompt=[1.0, 2.0]),
    "float_ids_frac.jsonl": _first_field(prompt=[1.5]),
    "bool_ids.jsonl": _first_field(prompt=[True, False]),
    "neg_ids.jsonl": _first_field(prompt=[1, -3]),
    "big_ids.jsonl": _first_field(prompt=[1, 258]),
    "huge_int.jsonl": _with_line(1, '{"prompt": [1, ' + str(10 ** 40) + '], "chosen": "a", "rejected": "b"}'),
    "pad_ids.jsonl": _every(prompt=[72, 256, 105], chosen=[257, 104], rejected=[256, 98]),
    "mixed.jsonl": _every(chosen=[104, 105]),
    "mixed_inlist.jsonl": _first_field(prompt=["he", 5]),
    "1mb.jsonl": _text(lambda: _jsonl([dict(good_records(1)[0], prompt="y" * 1_000_000)] + good_records(9))),
    "long_prompt.jsonl": _every(prompt="p" * 501),
    "long_completion.jsonl": _every(chosen=" " + "c" * 499),
    "crlf.jsonl": _text(lambda: _jsonl(good_records()).replace("\n", "\r\n")),
    "bom.jsonl": _text(lambda: "\ufeff" + _jsonl(good_records())),
    "badutf8.jsonl": _bytes(lambda: b"".join(
        (b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}' if i == 3 else json.dumps(r).encode()) + b"\n"
        for i, r in enumerate(good_records()))),
    "emoji.jsonl": _text(lambda: _jsonl([{"prompt": f"{i} 你好 🙂", "chosen": " 谢谢 👍", "rejected": " 走开 👎"}
                                         for i in range(10)])),
    "conversational.jsonl": _text(lambda: _jsonl([
        {"prompt": [{"role": "user", "content": f"hi {i}"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go"}]} for i in range(10)])),
    "implicit_prompt.jsonl": _text(lambda: _jsonl([{"chosen": f"Q{i}: hi A: hello", "rejected": f"Q{i}: hi A: go"}
                                                   for i in range(10)])),
    "good.jsonl.gz": _gzip,
    "extra_keys.jsonl": _every(id=3, score=0.5),
    "lone_surrogate.jsonl": _with_line(1, '{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}'),
    "nul.jsonl": _every(prompt="a\u0000b"),
    "dup_keys.jsonl": _with_line(1, '{"prompt": "a", "chosen": "b", "rejected": "c", "rejected": 7}'),
    "nan_token.jsonl": _with_line(1, '{"prompt": [NaN], "chosen": "a", "rejected": "b"}'),
    "two_per_line.jsonl": _with_line(1, '{"prompt": "a", "chosen": "b", "rejected": "c"} {"prompt": "a"}'),
    "pretty.jsonl": _text(lambda: "".join(json.dumps(r, indent=2) + "\n" for r in good_records())),
    "single.jsonl": _text(lambda: _jsonl(good_records(1))),
    "shared_prefix.jsonl": _text(_shared_prefix_completions),
    "good.parquet": _parquet,
    "afile": _text("not a directory\n"),
    "not_safetensors.safetensors": _text("this is text, not a safetensors file\n" * 4),
    "tokenizer_text.json": _text("hello, I am not a tokenizer\n"),
    "tokenizer_bpe.json": _bpe_tokenizer(["<pad>", "</s>"]),
    "tokenizer_nospecial.json": _bpe_tokenizer([]),
    "policy32.safetensors": _policy_file,
}
