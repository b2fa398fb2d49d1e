"""Tokenizers for the preference-data pipeline.

`ByteTokenizer` is the embedded default: it needs no download and no extra package, so the demo and
the tests always run. `HFTokenizer` wraps a Hugging Face `tokenizers` JSON file for real vocabularies;
the `tokenizers` package is imported only when one is actually loaded.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence, runtime_checkable

__all__ = ["Tokenizer", "ByteTokenizer", "HFTokenizer", "load_tokenizer"]

TOKENIZER_FILE = "tokenizer.json"  # the file a Hugging Face tokenizer folder keeps its vocabulary in

# Special-token names tried, in order, when an HF tokenizer file does not say which is pad / eos.
_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]", "<|im_end|>")
_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer: text <-> ids plus the pad/eos ids."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus pad=256 and eos=257 (vocab_size 258).

    Lossless for any text and dependency-free, which is why it is the default.
    """

    NUM_BYTES = 256
    PAD_ID = 256
    EOS_ID = 257
    _SPECIAL_NAMES = {PAD_ID: "<pad>", EOS_ID: "<eos>"}

    @property
    def vocab_size(self) -> int:
        return 258

    @property
    def pad_id(self) -> int:
        return self.PAD_ID

    @property
    def eos_id(self) -> int:
        return self.EOS_ID

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode expects str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Bytes back to text; invalid UTF-8 becomes U+FFFD. Special ids are skipped, or written as `<pad>` and
        `<eos>` with `skip_special_tokens=False` (to show what reaches the model)."""
        if not skip_special_tokens:
            pieces, run = [], []
            for i in (int(i) for i in ids):
                if 0 <= i < self.NUM_BYTES:
                    run.append(i)
                    continue
                pieces += [bytes(run).decode("utf-8", errors="replace"), self._SPECIAL_NAMES.get(i, "")]
                run = []
            return "".join(pieces) + bytes(run).decode("utf-8", errors="replace")
        data = bytes(int(i) for i in ids if 0 <= int(i) < self.NUM_BYTES)
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=258, pad_id=256, eos_id=257)"


def _import_tokenizers():
    try:
        import tokenizers  # noqa: F401  (optional dependency)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "HFTokenizer needs the Hugging Face `tokenizers` package; install it with "
            "`pip install 'dpo-jax[tokenizers]'` (or `pip install tokenizers`), or use the built-in "
            "ByteTokenizer (tokenizer spec 'byte')."
        ) from err
    return tokenizers


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (tokenizer.json) with explicit pad and eos ids."""

    def __init__(self, backend, *, pad_id: int, eos_id: int, source: str = "<in-memory>", bos_id: int | None = None):
        vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        for name, value in (("pad_id", pad_id), ("eos_id", eos_id), ("bos_id", bos_id)):
            if name == "bos_id" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
                raise ValueError(f"{source}: {name}={value!r} is not a token id in [0, {vocab_size})")
        self._backend = backend
        self._vocab_size = vocab_size
        self._pad_id = pad_id
        self._eos_id = eos_id
        self.bos_id = bos_id  # None when the tokenizer has none; the pipeline does not add it (encode adds no specials)
        self.source = source

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        pad_id: int | None = None,
        eos_id: int | None = None,
        pad_token: str | None = None,
        eos_token: str | None = None,
        bos_id: int | None = None,
    ) -> "HFTokenizer":
        """Load a tokenizer.json; pad/eos come from the arguments or the file's special tokens.

        When only one of pad/eos can be found, it is used for both (common for GPT-style vocabularies,
        where padding is masked out anyway). Raises ValueError if neither can be determined.
        """
        tokenizers = _import_tokenizers()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            backend = tokenizers.Tokenizer.from_file(path)
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"{path} is not a tokenizer.json the Hugging Face tokenizers library can read ({err}); "
                             "pass a tokenizer.json or a tokenizer folder, or omit --tokenizer for the byte "
                             "tokenizer") from None

        def token_id(token: str, role: str) -> int:
            found = backend.token_to_id(token)
            if found is None:
                raise ValueError(f"{path}: {role} token {token!r} is not in the vocabulary")
            return int(found)

        if pad_id is None and pad_token is not None:
            pad_id = token_id(pad_token, "pad")
        if eos_id is None and eos_token is not None:
            eos_id = token_id(eos_token, "eos")

        specials = _special_tokens(backend)
        if eos_id is None:
            eos_id = _first_present(specials, _EOS_CANDIDATES)
        if pad_id is None:
            pad_id = _first_present(specials, _PAD_CANDIDATES)
        if pad_id is None and eos_id is None:
            raise ValueError(
                f"{path}: cannot tell the pad and eos token ids: the file has no recognised special "
                f"tokens (looked for eos {list(_EOS_CANDIDATES)}, pad {list(_PAD_CANDIDATES)}; "
                f"special tokens present: {sorted(specials)}); pass pad_id=/eos_id= or "
                "pad_token=/eos_token= explicitly"
            )
        eos_id = pad_id if eos_id is None else eos_id
        pad_id = eos_id if pad_id is None else pad_id
        return cls(backend, pad_id=pad_id, eos_id=eos_id, source=path, bos_id=bos_id)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without template special tokens (the pipeline adds eos itself)."""
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode expects str, got {type(text).__name__}")
        return list(self._backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"eos_id={self.eos_id})"
        )


def _special_tokens(backend) -> dict[str, int]:
    """Content -> id of the file's added tokens that are marked special."""
    decoder = backend.get_added_tokens_decoder()  # {id: AddedToken}
    return {tok.content: int(i) for i, tok in decoder.items() if getattr(tok, "special", False)}


def _first_present(specials: dict[str, int], candidates: Sequence[str]) -> int | None:
    for name in candidates:
        if name in specials:
            return specials[name]
    return None


def load_tokenizer(spec: "str | os.PathLike | Tokenizer | None" = None, **kwargs) -> Tokenizer:
    """None or "byte" -> ByteTokenizer; a tokenizer object passes through; a tokenizer.json, or a Hugging Face
    tokenizer folder (its tokenizer.json; the folder's chat template is found by `data.chat`) -> HFTokenizer."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "byte"):
        if kwargs:
            raise ValueError(f"ByteTokenizer takes no options, got {sorted(kwargs)}")
        return ByteTokenizer()
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if os.path.isdir(path):
            path = os.path.join(path, TOKENIZER_FILE)
        return HFTokenizer.from_file(path, **kwargs)
    if isinstance(spec, Tokenizer):
        return spec
    raise TypeError(f"tokenizer spec must be None, 'byte', a path or a Tokenizer, got {spec!r}")
