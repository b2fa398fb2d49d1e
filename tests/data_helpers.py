"""Small files the data tests write: a Hugging Face tokenizer folder (trained here, never downloaded) and records."""

import json
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples" / "data"
SPECIAL_TOKENS = ["<pad>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = [json.loads(line) for line in (EXAMPLES / "standard.jsonl").read_text().splitlines()]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path = pathlib.Path(path)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_bpe_tokenizer(folder, *, chat_template=None, vocab_size=320, config_extra=None):
    """A byte-level BPE tokenizer.json trained on the example questions, plus a tokenizer_config.json with
    `chat_template` (omitted when None), eos `</s>` and pad `<pad>`; returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [row["prompt"] + row["chosen"] for row in CORPUS] + [row["prompt"] + row["rejected"] for row in CORPUS]
    tokenizer.train_from_iterator(text * 4, trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "<pad>",
              "model_max_length": 128, **(config_extra or {})}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def write_wordlevel_tokenizer(folder, words):
    """A whitespace-split WordLevel tokenizer.json over `words` (+ <unk>, <pad>, </s>); returns its path."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {word: i for i, word in enumerate(["<unk>", "<pad>", "</s>", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<pad>", "</s>"])
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def conversational_rows(count=8):
    """Conversational explicit-prompt records built from the example questions."""
    rows = []
    for row in (CORPUS * (count // len(CORPUS) + 1))[:count]:
        question = row["prompt"].removeprefix("Q: ").removesuffix("\nA:")
        rows.append({"prompt": [user(question)], "chosen": [assistant(row["chosen"].strip())],
                     "rejected": [assistant(row["rejected"].strip())]})
    return rows
