"""Tokenizer tests: the byte default and an HF tokenizer built in memory (no downloads)."""

import pytest
from hypothesis import given, strategies as st

from dpo_jax.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")


def test_byte_tokenizer_constants():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (258, 256, 257)
    assert isinstance(tok, Tokenizer)


def test_byte_tokenizer_encode_is_utf8_bytes():
    tok = ByteTokenizer()
    assert tok.encode("hi") == [104, 105]
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.encode("") == []


@given(st.text())
def test_byte_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_byte_decode_skips_specials_and_replaces_bad_utf8():
    tok = ByteTokenizer()
    assert tok.decode([104, 256, 105, 257, 257]) == "hi"
    assert tok.decode([0xC3]) == "\ufffd"


def test_byte_encode_rejects_non_str():
    with pytest.raises(TypeError, match="expects str"):
        ByteTokenizer().encode([1, 2])


def _train_wordlevel(path, specials=("<pad>", "</s>", "<unk>")):
    from tokenizers import Tokenizer as HFBackend, models, pre_tokenizers, trainers

    backend = HFBackend(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(specials))
    backend.train_from_iterator(["the cat sat", "the dog ran", "a cat ran home"], trainer=trainer)
    backend.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    backend.save(str(path))
    return backend


def test_hf_wordlevel_round_trip_and_specials(tmp_path):
    path = tmp_path / "tok.json"
    backend = _train_wordlevel(path)
    tok = HFTokenizer.from_file(path)
    assert tok.pad_id == backend.token_to_id("<pad>")
    assert tok.eos_id == backend.token_to_id("</s>")
    assert tok.vocab_size == backend.get_vocab_size()
    ids = tok.encode("the cat ran home")
    assert len(ids) == 4 and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == "the cat ran home"
    assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == "the cat ran home"
    assert isinstance(tok, Tokenizer)


def test_hf_bpe_round_trip(tmp_path):
    from tokenizers import Tokenizer as HFBackend, decoders, models, pre_tokenizers, trainers

    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["hello world", "hello there", "world peace"], trainer=trainer)
    path = tmp_path / "bpe.json"
    backend.save(str(path))
    tok = load_tokenizer(str(path))
    assert isinstance(tok, HFTokenizer)
    # only an eos-like token: it doubles as pad
    assert tok.eos_id == tok.pad_id == backend.token_to_id("<|endoftext|>")
    for text in ["hello world", "peace, unseen text! é"]:
        assert tok.decode(tok.encode(text)) == text


def test_hf_explicit_ids_and_tokens(tmp_path):
    path = tmp_path / "tok.json"
    backend = _train_wordlevel(path, specials=("<unk>",))
    cat = backend.token_to_id("cat")
    tok = HFTokenizer.from_file(path, pad_id=0, eos_token="cat")
    assert (tok.pad_id, tok.eos_id) == (0, cat)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer.from_file(path, eos_token="<nope>")
    with pytest.raises(ValueError, match="eos_id=9999"):
        HFTokenizer.from_file(path, pad_id=0, eos_id=9999)


def test_hf_without_special_tokens_errors(tmp_path):
    path = tmp_path / "tok.json"
    _train_wordlevel(path, specials=("<unk>",))
    with pytest.raises(ValueError, match="cannot tell the pad and eos"):
        HFTokenizer.from_file(path)


def test_hf_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        HFTokenizer.from_file(tmp_path / "missing.json")


def test_missing_tokenizers_package_message(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tokenizers":
            raise ImportError("no module")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"dpo-jax\[tokenizers\]"):
        HFTokenizer.from_file(tmp_path / "x.json")


def test_load_tokenizer_specs():
    assert isinstance(load_tokenizer(None), ByteTokenizer)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    tok = ByteTokenizer()
    assert load_tokenizer(tok) is tok
    with pytest.raises(TypeError, match="tokenizer spec"):
        load_tokenizer(123)
