"""A model directory's tokenizer: tokenizer.json, pad / eos / bos from tokenizer_config.json, then
generation_config.json, then config.json; tokens missing from the vocabulary and a missing tokenizer.json are
errors that name the file."""

import json

import pytest

from dpo_jax.hf_demo import write_tokenizer
from dpo_jax.pretrained_tokenizer import load_model_tokenizer


@pytest.fixture
def model_dir(tmp_path):
    write_tokenizer(str(tmp_path))  # digits 0-9, '>' 10, '</s>' 11, '<pad>' 12, '<unk>' 13
    return tmp_path


def write(path, data):
    path.write_text(json.dumps(data))


def test_special_ids_from_tokenizer_config(model_dir):
    tokenizer = load_model_tokenizer(model_dir)
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id, tokenizer.vocab_size) == (12, 11, None, 14)
    assert tokenizer.encode("3 1>") == [3, 1, 10] and tokenizer.decode([3, 1, 10, 11, 12]) == "31>"


def test_token_objects_and_the_fallback_order(model_dir):
    write(model_dir / "tokenizer_config.json", {"bos_token": {"content": ">", "special": True}})
    write(model_dir / "generation_config.json", {"eos_token_id": [11, 5]})
    write(model_dir / "config.json", {"eos_token_id": 3, "pad_token_id": 9})
    tokenizer = load_model_tokenizer(model_dir)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (10, 11, 9)


def test_without_a_pad_id_eos_pads(model_dir):
    write(model_dir / "tokenizer_config.json", {})
    write(model_dir / "generation_config.json", {"eos_token_id": 11})
    tokenizer = load_model_tokenizer(model_dir)
    assert tokenizer.pad_id == tokenizer.eos_id == 11


def test_a_named_token_outside_the_vocabulary_is_an_error(model_dir):
    write(model_dir / "tokenizer_config.json", {"eos_token": "<|eot_id|>"})
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|eot_id\|>' is not in the vocabulary"):
        load_model_tokenizer(model_dir)


def test_a_directory_without_tokenizer_json_says_so(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json.*--tokenizer"):
        load_model_tokenizer(tmp_path / "elsewhere")
    tokenizer = load_model_tokenizer(tmp_path / "elsewhere", tokenizer_file=model_dir / "tokenizer.json")
    assert tokenizer.eos_id == 11  # found among the file's special tokens
