"""Chat templates: conversational pairs rendered as transformers renders them, tokenized with a boundary check.

A template is Jinja2 text (the `chat_template` of a `tokenizer_config.json`, a `chat_template.jinja` beside it, or
any file given with `--chat-template`). It is compiled the way `transformers` compiles it: a sandboxed
environment (templates from the Hub are untrusted code) with `trim_blocks` and `lstrip_blocks`, the
`loopcontrols` extension, `raise_exception`, `strftime_now`, a `tojson` that does not escape HTML, and the
`{% generation %}` block (rendered as its body). It sees `messages`, `add_generation_prompt`, `tools` and
`documents` (None) and the special tokens of the tokenizer config (`bos_token`, `eos_token`, ...).

A pair becomes tokens like this: the prompt is rendered with the generation prompt, prompt + completion without
it, and each is tokenized whole. The completion is what follows the prompt's tokens inside the prompt +
completion tokens. That is only true if the prompt's tokens are a prefix of them; a template that renders the
prompt differently inside the conversation, or a tokenizer that merges tokens across the boundary, would shift
the prompt/completion mask silently (TRL only warns). Here that pair is refused (`ChatTemplateError`), with both
token sequences around the first difference.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

from dpo_jax.data.display import show_tokens

__all__ = ["ChatTemplate", "ChatTemplateError", "TEMPLATE_FILE", "CONFIG_FILE", "find_chat_template",
           "MIN_JINJA_VERSION"]

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
MIN_JINJA_VERSION = (3, 1, 6)  # older releases have known sandbox escapes (transformers refuses them too)
BOUNDARY_CONTEXT = 4           # tokens shown on each side of the first difference


class ChatTemplateError(ValueError):
    """A template that cannot render a pair, or whose prompt tokens are not a prefix of prompt + completion."""


def _import_jinja():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:
        raise ImportError("chat templates need the `jinja2` package: pip install 'dpo-jax[chat]' "
                          "(or pip install 'jinja2>=3.1.6')") from None
    version = tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit())
    if version < MIN_JINJA_VERSION:
        raise ImportError(f"chat templates need jinja2>=3.1.6 (sandbox fixes), found {jinja2.__version__}: "
                          "pip install -U 'jinja2>=3.1.6'")
    return jinja2


def _environment():
    """The sandboxed Jinja environment transformers renders chat templates in."""
    jinja2 = _import_jinja()

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for masks; here it renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment


def _token_text(value: Any) -> str | None:
    """A special token of tokenizer_config.json: a string, or an AddedToken dict with "content"."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the tokenizer config ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a tokenizer config is a JSON object, got {type(config).__name__}")
    return config


def _config_template(config: dict, path: str) -> str | None:
    """`chat_template` of a tokenizer config: a string, or a list of named templates (the one named "default")."""
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ValueError(f"{path}: chat_template lists templates {sorted(map(str, named))} but none named 'default'")
    raise ValueError(f"{path}: chat_template must be a string or a list of named templates, got "
                     f"{type(template).__name__}")


def _special_tokens(config: dict) -> dict[str, str]:
    tokens = {key: _token_text(config.get(key)) for key in SPECIAL_TOKEN_KEYS}
    return {key: value for key, value in tokens.items() if value is not None}


class ChatTemplate:
    """A compiled chat template and the special tokens it may refer to (`bos_token`, `eos_token`, ...)."""

    def __init__(self, text: str, *, origin: str = "<string>", special_tokens: dict[str, str] | None = None):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{origin}: the chat template is empty")
        jinja2 = _import_jinja()
        self.text, self.origin = text, origin
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _environment().from_string(text)
        except jinja2.exceptions.TemplateSyntaxError as err:
            raise ValueError(f"{origin}: the chat template is not valid Jinja (line {err.lineno}: {err.message})") \
                from None

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, special_tokens: dict[str, str] | None = None) -> "ChatTemplate":
        """A template file (Jinja text), a tokenizer_config.json, or a folder holding either."""
        path = os.fspath(path)
        if os.path.isdir(path):
            found = _template_in_folder(path, special_tokens)
            if found is None:
                raise ValueError(f"{path}: no chat template in this folder (looked for {TEMPLATE_FILE} and a "
                                 f"chat_template in {CONFIG_FILE})")
            return found
        if not os.path.isfile(path):
            raise FileNotFoundError(f"chat template file not found: {path}")
        if path.endswith(".json"):
            config = _read_config(path)
            text = _config_template(config, path)
            if text is None:
                raise ValueError(f"{path}: has no chat_template")
            return cls(text, origin=path, special_tokens={**(special_tokens or {}), **_special_tokens(config)})
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: a chat template is UTF-8 text ({err.reason} at byte {err.start})") from None
        return cls(text, origin=path, special_tokens=special_tokens)

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
        """The template's text for `messages`; ChatTemplateError if the template refuses or fails."""
        jinja2 = _import_jinja()
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         tools=None, documents=None, **self.special_tokens)
        except jinja2.exceptions.TemplateError as err:  # raise_exception(), undefined names, sandbox refusals
            raise ChatTemplateError(f"chat template {self.origin}: {type(err).__name__}: {err}") from None

    def encode(self, prompt: Sequence[dict], completion: Sequence[dict], tokenizer, *,
               key: str = "completion") -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids): the tokens of the rendered prompt and what follows them in the tokens of
        the rendered prompt + completion; ChatTemplateError when the former are not a prefix of the latter."""
        prompt_text = self.render(prompt, add_generation_prompt=True)
        full_text = self.render(list(prompt) + list(completion), add_generation_prompt=False)
        prompt_ids = list(tokenizer.encode(prompt_text))
        full_ids = list(tokenizer.encode(full_text))
        boundary = len(prompt_ids)
        if full_ids[:boundary] != prompt_ids:
            first = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), len(full_ids))
            low, high = max(first - BOUNDARY_CONTEXT, 0), first + BOUNDARY_CONTEXT
            raise ChatTemplateError(
                f"chat template {self.origin}: the prompt's {boundary} tokens are not a prefix of the "
                f"prompt+{key} tokens (first difference at token {first}), so the prompt/completion boundary would "
                f"shift; prompt alone: {show_tokens(tokenizer, prompt_ids[low:high], low) or '(ends)'}; "
                f"prompt+{key}: {show_tokens(tokenizer, full_ids[low:high], low) or '(ends)'}")
        completion_ids = full_ids[boundary:]
        if not completion_ids:
            raise ChatTemplateError(f"chat template {self.origin}: {key!r} renders to no token after the prompt")
        return prompt_ids, completion_ids

    def __repr__(self) -> str:
        return f"ChatTemplate({self.origin!r})"


def _template_in_folder(folder: str, special_tokens: dict[str, str] | None) -> ChatTemplate | None:
    """The folder's chat_template.jinja (transformers' current layout) or its tokenizer_config.json's template."""
    config_path = os.path.join(folder, CONFIG_FILE)
    config = _read_config(config_path) if os.path.isfile(config_path) else {}
    tokens = {**(special_tokens or {}), **_special_tokens(config)}  # the folder's own config wins
    template_path = os.path.join(folder, TEMPLATE_FILE)
    if os.path.isfile(template_path):
        return ChatTemplate.from_path(template_path, special_tokens=tokens)
    text = _config_template(config, config_path)
    return None if text is None else ChatTemplate(text, origin=config_path, special_tokens=tokens)


def _tokenizer_folder(tokenizer_spec) -> str | None:
    if not isinstance(tokenizer_spec, (str, os.PathLike)):
        return None
    spec = os.fspath(tokenizer_spec)
    if os.path.isdir(spec):
        return spec
    if os.path.isfile(spec):
        return os.path.dirname(os.path.abspath(spec))
    return None


def find_chat_template(chat_template=None, tokenizer_spec=None) -> ChatTemplate | None:
    """The template a run uses: `chat_template` (a ChatTemplate, or a path for `ChatTemplate.from_path`), else the
    one in the tokenizer's folder (`tokenizer_spec` a folder, or a tokenizer.json inside one), else None.

    A template file given alone takes its special tokens from the tokenizer folder's tokenizer_config.json.
    """
    if isinstance(chat_template, ChatTemplate):
        return chat_template
    folder = _tokenizer_folder(tokenizer_spec)
    folder_config = os.path.join(folder, CONFIG_FILE) if folder else None
    tokens = _special_tokens(_read_config(folder_config)) if folder_config and os.path.isfile(folder_config) else {}
    if chat_template is not None:
        return ChatTemplate.from_path(chat_template, special_tokens=tokens)
    return _template_in_folder(folder, None) if folder else None
