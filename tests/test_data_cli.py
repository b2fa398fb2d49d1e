"""The CLI on real files: `dpo-jax train` two steps on each example file under examples/data, a conversational file
with a Hugging Face tokenizer folder end to end (with an eval split), `dpo-jax inspect-data`, and clear errors."""

import json

import pytest

from dpo_jax.cli import main
from dpo_jax.data import find_chat_template, read_preference_jsonl
from dpo_jax.tokenizer import load_tokenizer
from dpo_jax.train.outputs import read_metrics
from tests.data_helpers import EXAMPLES, write_bpe_tokenizer, write_jsonl

TEMPLATE = str(EXAMPLES / "chat_template.jinja")
TINY = ["--steps", "2", "--batch-size", "2", "--dim", "32", "--depth", "1", "--heads", "2", "--max-seq-len", "64",
        "--no-progress"]
EXAMPLE_FORMATS = {
    "standard.jsonl": "standard_preference",
    "standard_implicit_prompt.jsonl": "standard_implicit_prompt_preference",
    "token_ids.jsonl": "standard_preference",
    "conversational.jsonl": "conversational_preference",
    "conversational_implicit_prompt.jsonl": "conversational_implicit_prompt_preference",
}


def train(capsys, *argv):
    code = main(["train", *argv])
    captured = capsys.readouterr()
    return code, captured


@pytest.mark.parametrize("name", sorted(EXAMPLE_FORMATS))
def test_cli_trains_two_steps_on_each_example_file(tmp_path, capsys, name):
    out = tmp_path / "run"
    code, captured = train(capsys, "--data", str(EXAMPLES / name), "--chat-template", TEMPLATE, "--out", str(out),
                           *TINY)
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["steps"] == 2 and summary["data"]["train_pairs"] == 8
    assert summary["data"]["files"][0]["format"] == EXAMPLE_FORMATS[name]
    assert f"format {EXAMPLE_FORMATS[name]}" in captured.err   # the detected format is stated in the log
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return write_bpe_tokenizer(tmp_path_factory.mktemp("hf"), chat_template=(EXAMPLES / "chat_template.jinja").read_text())


def test_conversational_file_with_a_hugging_face_tokenizer_folder_trains_end_to_end(tmp_path, capsys,
                                                                                   tokenizer_folder):
    out = tmp_path / "run"
    code, captured = train(capsys, "--data", str(EXAMPLES / "conversational.jsonl"), "--tokenizer",
                           str(tokenizer_folder), "--eval-split", "0.25", "--out", str(out), *TINY)
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    (report,) = summary["data"]["files"]
    assert report["format"] == "conversational_preference"
    assert report["chat_template"] == str(tokenizer_folder / "tokenizer_config.json")
    assert summary["data"]["train_pairs"] == 6 and summary["eval_pairs"] == 2
    assert all(isinstance(summary[f"eval/{k}"], float) for k in ("loss", "rewards/accuracies", "rewards/margins"))
    model_config = json.loads((out / "run_config.json").read_text())
    assert model_config["tokenizer"] == str(tokenizer_folder)
    from dpo_jax.models.x_transformers import load_safetensors

    assert load_safetensors(out / "policy.safetensors").config.num_tokens == 320   # the tokenizer's vocabulary


def test_inspect_data_shows_counts_format_lengths_truncation_and_the_boundary(capsys, tokenizer_folder):
    data = EXAMPLES / "conversational.jsonl"
    assert main(["inspect-data", "--data", str(data), "--model", str(tokenizer_folder), "--max-seq-len", "40"]) == 0
    printed = capsys.readouterr().out
    tokenizer, template = load_tokenizer(str(tokenizer_folder)), find_chat_template(None, tokenizer_folder)
    examples = read_preference_jsonl(data, tokenizer, chat_template=template)
    assert printed.startswith(f"8 pairs in 1 file(s); tokenizer {tokenizer!r}\n")
    assert "format conversational_preference (conversational, explicit prompt)" in printed
    longest = max(len(ex.prompt) + max(len(ex.chosen), len(ex.rejected)) for ex in examples)
    assert f"  pair     {min(len(ex.prompt) + max(len(ex.chosen), len(ex.rejected)) for ex in examples):>8}" in printed
    assert printed.split("  pair", 1)[1].splitlines()[0].split()[-1] == str(longest)
    cut = sum(len(ex.prompt) + max(len(ex.chosen), len(ex.rejected)) > 40 for ex in examples)
    assert f"truncation at max_len=40: {cut} of 8 pairs" in printed
    # the rendered example: the template's prompt text, the mark, then the completion's text
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    prompt_text = template.render(rows[0]["prompt"], add_generation_prompt=True)
    full_text = template.render(rows[0]["prompt"] + rows[0]["chosen"], add_generation_prompt=False)
    assert len(examples[0].prompt) > 40 and "truncated to max_len=40: prompt 39 tokens (its start cut)" in printed
    assert main(["inspect-data", "--data", str(data), "--model", str(tokenizer_folder), "--max-seq-len", "512"]) == 0
    assert prompt_text + "⟦|⟧" + full_text[len(prompt_text):] in capsys.readouterr().out


def test_cli_data_errors_exit_with_the_file_and_record(tmp_path, capsys):
    conversational = str(EXAMPLES / "conversational.jsonl")
    code, captured = train(capsys, "--data", conversational, "--out", str(tmp_path / "a"), *TINY)
    assert code == 2 and "conversational.jsonl:1: conversational records" in captured.err
    assert "need a chat template" in captured.err and "Traceback" not in captured.err
    shifting = tmp_path / "shift.jinja"
    shifting.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                        "{% if add_generation_prompt %}<assistant>\n{% endif %}")
    code, captured = train(capsys, "--data", conversational, "--chat-template", str(shifting), "--out",
                           str(tmp_path / "b"), *TINY)
    assert code == 2 and "conversational.jsonl:1: chat template" in captured.err
    assert "are not a prefix of the prompt+chosen tokens" in captured.err
    assert main(["inspect-data", "--data", conversational]) == 2
    assert "need a chat template" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b"}])
    assert main(["inspect-data", "--data", str(bad)]) == 2
    assert "bad.jsonl:1: missing key(s) ['rejected']" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--eval-split", "0.1"], "need --data"),
    (["train", "--data", "x.jsonl", "--eval-every", "5"], "--eval-every needs --eval-data or --eval-split"),
    (["train", "--data", "x.jsonl", "--eval-split", "1.5"], "must be a fraction in (0, 1)"),
    (["train", "--data", "x.jsonl", "--eval-split", "0.1", "--eval-data", "y.jsonl"], "not both"),
    (["inspect-data"], "required: --data"),
])
def test_bad_data_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
