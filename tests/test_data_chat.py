"""Chat templates: rendered and tokenized as transformers does (it is the oracle here), found where transformers keeps
them, and the prompt/completion boundary check that refuses a pair instead of shifting its mask."""

import json
import os
import sys

import pytest

from dpo_jax.data import ChatTemplate, ChatTemplateError, DataError, find_chat_template, read_preference_jsonl
from dpo_jax.tokenizer import ByteTokenizer, load_tokenizer
from tests.data_helpers import (EXAMPLES, assistant, conversational_rows, user, write_bpe_tokenizer, write_jsonl,
                                write_wordlevel_tokenizer)

TOK = ByteTokenizer()
EXAMPLE_TEMPLATE = (EXAMPLES / "chat_template.jinja").read_text()
# an indented template in the style of the Hub's: whitespace control, trim/lstrip blocks, bos/eos, raise_exception,
# loop controls, a namespace and the generation block
HUB_STYLE_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- '<|system|>\\n' + message['content'] + eos_token }}
    {%- elif message['role'] == 'user' %}
        {%- set ns.turns = ns.turns + 1 %}
<|user|>
{{ message['content'] }}{{ eos_token }}
    {%- elif message['role'] == 'assistant' %}
<|assistant|>
{% generation %}{{ message['content'] | trim }}{{ eos_token }}{% endgeneration %}
    {%- else %}
        {{- raise_exception('unknown role ' + message['role']) }}
    {%- endif %}
    {%- if loop.index > 50 %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|assistant|>
{% endif %}"""
CONVERSATIONS = [
    [user("What is 2 + 3?")],
    [{"role": "system", "content": "Answer briefly."}, user("Name the largest planet."), assistant("  Jupiter. ")],
    [user("hi"), assistant("hello"), user("What is the capital of Japan?"), assistant("Tokyo.")],
]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return write_bpe_tokenizer(tmp_path_factory.mktemp("tok"), chat_template=HUB_STYLE_TEMPLATE,
                               config_extra={"bos_token": {"content": "<|system|>", "__type": "AddedToken"}})


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_rendering_and_tokens_equal_transformers(hf_folder, index, add_generation_prompt):
    from transformers import PreTrainedTokenizerFast

    reference = PreTrainedTokenizerFast.from_pretrained(str(hf_folder))
    messages = CONVERSATIONS[index]
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    template = find_chat_template(None, str(hf_folder))
    assert template.origin == str(hf_folder / "tokenizer_config.json")
    rendered = template.render(messages, add_generation_prompt=add_generation_prompt)
    assert rendered == expected
    expected_ids = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    assert load_tokenizer(str(hf_folder)).encode(rendered) == list(expected_ids["input_ids"])


def test_tojson_does_not_escape_html_like_transformers():
    template = ChatTemplate("{{ messages | tojson }}")
    assert template.render([user("<b> & 'x'")], add_generation_prompt=False) == \
        json.dumps([user("<b> & 'x'")], ensure_ascii=False)


def test_raise_exception_refuses_the_record_with_its_line(tmp_path, hf_folder):
    rows = conversational_rows(3)
    rows[1]["prompt"] = [{"role": "tool", "content": "?"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError, match=r"c.jsonl:2: chat template .*TemplateError: unknown role tool"):
        read_preference_jsonl(path, load_tokenizer(str(hf_folder)), chat_template=find_chat_template(None, hf_folder))


# ---- the boundary check ------------------------------------------------------------------------------------------

# On purpose: the generation prompt ends with a newline, but an assistant turn in the conversation has none, so the
# rendered prompt is not a prefix of prompt + completion.
SHIFTING_TEMPLATE = ("{% for m in messages %}{% if m.role == 'assistant' %}<|assistant|>{{ m.content }}<|end|>"
                     "{% else %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_template_that_breaks_the_prefix_is_refused_with_both_token_sequences(tmp_path):
    rows = conversational_rows(4)
    template = ChatTemplate(SHIFTING_TEMPLATE, origin="shifting.jinja")
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError) as info:
        read_preference_jsonl(path, TOK, chat_template=template)
    message = str(info.value)
    # independently: where the two renderings part, in bytes (the byte tokenizer's tokens)
    prompt = template.render(rows[0]["prompt"], add_generation_prompt=True).encode()
    full = template.render(rows[0]["prompt"] + rows[0]["chosen"], add_generation_prompt=False).encode()
    first = len(os.path.commonprefix([prompt, full]))
    assert prompt[first:first + 1] == b"\n" and full[first:first + 1] == rows[0]["chosen"][0]["content"][:1].encode()
    assert message.startswith(f"{path}:1: chat template shifting.jinja: the prompt's {len(prompt)} tokens are not a "
                              f"prefix of the prompt+chosen tokens (first difference at token {first})")
    assert f"prompt alone: [{first - 4}] {prompt[first - 4]} " in message
    assert f"[{first}] {prompt[first]} '\\n'" in message                       # the prompt's newline ...
    assert f"[{first}] {full[first]} {chr(full[first])!r}" in message          # ... where the answer starts instead
    assert "(and 3 more malformed line(s): 2, 3, 4); file rejected" in message


def test_a_token_merge_across_the_boundary_is_refused_even_when_the_text_is_a_prefix(tmp_path):
    """The rendered prompt is a string prefix of prompt + completion, but the tokenizer merges across it."""
    tokenizer_file = write_wordlevel_tokenizer(tmp_path / "tok", ["User:", "hi", "Assistant:", "Assistant:hello",
                                                                   "hello", "bye", "Assistant:bye"])
    template = ChatTemplate("{% for m in messages %}{% if m.role == 'user' %}User: {{ m.content }} {% else %}"
                            "Assistant:{{ m.content }} {% endif %}{% endfor %}"
                            "{% if add_generation_prompt %}Assistant:{% endif %}", origin="merge.jinja")
    row = {"prompt": [user("hi")], "chosen": [assistant("hello")], "rejected": [assistant("bye")]}
    prompt_text = template.render(row["prompt"], add_generation_prompt=True)
    assert template.render(row["prompt"] + row["chosen"], add_generation_prompt=False).startswith(prompt_text)
    path = write_jsonl(tmp_path / "c.jsonl", [row])
    with pytest.raises(DataError, match=r"c.jsonl:1: chat template merge.jinja: the prompt's 3 tokens are not a "
                                        r"prefix .*\(first difference at token 2\).* prompt alone: \[0\] 3 'User:', "
                                        r"\[1\] 4 'hi', \[2\] 5 'Assistant:'; prompt\+chosen: \[0\] 3 'User:', "
                                        r"\[1\] 4 'hi', \[2\] 6 'Assistant:hello'"):
        read_preference_jsonl(path, load_tokenizer(str(tokenizer_file)), chat_template=template)


def test_prefix_template_splits_tokens_at_the_boundary(hf_folder):
    template = find_chat_template(None, hf_folder)
    tokenizer = load_tokenizer(str(hf_folder))
    prompt, completion = CONVERSATIONS[0], [assistant("5")]
    prompt_ids, completion_ids = template.encode(prompt, completion, tokenizer)
    full = tokenizer.encode(template.render(prompt + completion, add_generation_prompt=False))
    assert prompt_ids + completion_ids == full
    assert prompt_ids == tokenizer.encode(template.render(prompt, add_generation_prompt=True))
    assert tokenizer.decode(completion_ids, skip_special_tokens=False) == "5</s>"


# ---- where templates come from -----------------------------------------------------------------------------------

def test_template_sources(tmp_path):
    folder = write_bpe_tokenizer(tmp_path / "a", chat_template=[{"name": "tool_use", "template": "T"},
                                                                 {"name": "default", "template": "D{{ eos_token }}"}])
    assert find_chat_template(None, folder).render([], add_generation_prompt=False) == "D</s>"
    assert find_chat_template(None, folder / "tokenizer.json").origin == str(folder / "tokenizer_config.json")
    (folder / "chat_template.jinja").write_text("J{{ eos_token }}")   # transformers' current layout wins
    assert find_chat_template(None, folder).render([], add_generation_prompt=False) == "J</s>"
    other = tmp_path / "mine.jinja"
    other.write_text("M{{ eos_token }}{{ pad_token }}")                 # a file takes the tokenizer's special tokens
    assert find_chat_template(other, folder).render([], add_generation_prompt=False) == "M</s><pad>"
    assert find_chat_template(folder / "tokenizer_config.json").render([], add_generation_prompt=False) == "D</s>"
    assert find_chat_template(None, None) is None
    assert find_chat_template(None, write_bpe_tokenizer(tmp_path / "none")) is None

    write_bpe_tokenizer(tmp_path / "b", chat_template=[{"name": "tool_use", "template": "T"}])
    with pytest.raises(ValueError, match="lists templates \\['tool_use'\\] but none named 'default'"):
        find_chat_template(None, tmp_path / "b")
    with pytest.raises(ValueError, match="no chat template in this folder"):
        ChatTemplate.from_path(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="chat template file not found"):
        find_chat_template(tmp_path / "missing.jinja")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    with pytest.raises(ValueError, match="bad.jinja: the chat template is not valid Jinja"):
        ChatTemplate.from_path(bad)


def test_templates_run_sandboxed():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError, match="SecurityError|UndefinedError"):
        template.render([user("x")], add_generation_prompt=False)


def test_missing_jinja2_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ImportError, match=r"pip install 'dpo-jax\[chat\]'"):
        ChatTemplate("x")
