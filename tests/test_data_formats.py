"""TRL's four preference formats: detection per file, the implicit-prompt rule, refusals with file and line, and
the example files under examples/data (each format gives the tokens its explicit twin gives)."""

import pytest

from dpo_jax.data import (ChatTemplate, DataError, extract_prompt, parse_record, read_preference_data,
                          read_preference_jsonl)
from dpo_jax.tokenizer import ByteTokenizer
from tests.data_helpers import EXAMPLES, assistant, user, write_jsonl

TOK = ByteTokenizer()
EOS = TOK.eos_id
# prompt turns as "<role>:content|", then the generation prompt "<assistant>:"
TEMPLATE = ChatTemplate("{% for m in messages %}<{{ m.role }}>:{{ m.content }}|{% endfor %}"
                        "{% if add_generation_prompt %}<assistant>:{% endif %}")


def ids(text):
    return list(text.encode())


def test_standard_explicit_prompt_text_and_ids():
    pair = parse_record({"prompt": "Q", "chosen": "yes", "rejected": [1, 2]})
    assert pair.format == "standard_preference"
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q", "yes", [1, 2])


@pytest.mark.parametrize("chosen, rejected, expected", [
    # TRL's rule: the shared prefix, a space before the difference going to the completions
    ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),
    ("ab", "ac", ("a", "b", "c")),
    # no difference within the shorter one: it keeps its last element as its completion
    ("abc", "abcd", ("ab", "c", "cd")),
    # differing at the first element: an empty prompt (and no look at the element before it)
    ("x ", "y ", ("", "x ", "y ")),
    ([5, 6, 7, 8], [5, 6, 9], ([5, 6], [7, 8], [9])),
])
def test_implicit_prompt_is_trls_longest_common_prefix(chosen, rejected, expected):
    prompt, chosen_part, rejected_part = extract_prompt(chosen, rejected)
    assert (prompt, chosen_part, rejected_part) == expected
    assert prompt + chosen_part == chosen and prompt + rejected_part == rejected


def test_standard_implicit_prompt_record():
    pair = parse_record({"chosen": "Q: hi\nA: yes", "rejected": "Q: hi\nA: no"})
    assert pair.format == "standard_implicit_prompt_preference"
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q: hi\nA:", " yes", " no")


def test_conversational_explicit_and_implicit_prompt_records():
    explicit = parse_record({"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]})
    assert explicit.format == "conversational_preference" and explicit.conversational
    implicit = parse_record({"chosen": [user("hi"), assistant("a"), user("more"), assistant("c")],
                             "rejected": [user("hi"), assistant("a"), user("more"), assistant("d")]})
    assert implicit.format == "conversational_implicit_prompt_preference"
    assert implicit.prompt == [user("hi"), assistant("a"), user("more")]
    assert (implicit.chosen, implicit.rejected) == ([assistant("c")], [assistant("d")])


def test_parquet_style_none_fields_are_dropped_from_messages():
    pair = parse_record({"prompt": [{"role": "user", "content": "hi", "tool_calls": None}],
                         "chosen": [assistant("a")], "rejected": [assistant("b")]})
    assert pair.prompt == [user("hi")]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "text", "chosen": [assistant("a")], "rejected": [assistant("b")]},
     "need 'prompt' as a list of messages, got str"),
    ({"prompt": [user("q")], "chosen": [{"content": "a"}], "rejected": [assistant("b")]}, "'chosen'[0] has no 'role'"),
    ({"prompt": [user("q")], "chosen": [{"role": "assistant"}], "rejected": [assistant("b")]}, "has no 'content'"),
    ({"prompt": [user("q")], "chosen": [assistant("a"), user("again")], "rejected": [assistant("b")]},
     "'chosen' after the prompt holds ['user'] message"),
    ({"prompt": [user("q"), assistant("started")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
     "ends with an assistant message"),
    ({"prompt": [user("q")], "chosen": [], "rejected": [assistant("b")]}, "'chosen' has no message after the prompt"),
    # an implicit prompt whose conversations part before the last answer: the rest is not assistant-only
    ({"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("x"), user("u"), assistant("y")]},
     "'rejected' after the prompt holds ['user'] message"),
    ({"chosen": "text", "rejected": [1, 2]}, "both text or both token id lists"),
    ({"prompt": "only"}, "missing key(s) ['chosen', 'rejected']"),
    ([1, 2], "expected a JSON object"),
])
def test_malformed_records_say_what_is_wrong(row, message):
    with pytest.raises(ValueError) as info:
        parse_record(row)
    assert message in str(info.value)


def test_each_file_states_its_format_and_extra_keys_once(tmp_path):
    standard = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b", "id": i, "score": 1}
                                                  for i in range(3)])
    implicit = write_jsonl(tmp_path / "i.jsonl", [{"chosen": "Q a", "rejected": "Q b", "source": "x"}])
    conversational = write_jsonl(tmp_path / "c.jsonl", [{"prompt": [user("q")], "chosen": [assistant("a")],
                                                         "rejected": [assistant("b")]}])
    data = read_preference_data([standard, implicit, conversational], TOK, chat_template=TEMPLATE)
    assert [r.format for r in data.files] == ["standard_preference", "standard_implicit_prompt_preference",
                                              "conversational_preference"]
    assert [r.ignored_keys for r in data.files] == [("id", "score"), ("source",), ()]
    assert [r.pairs for r in data.files] == [3, 1, 1]
    lines = data.describe()
    assert lines[0] == f"{standard}: 3 pairs, jsonl, format standard_preference (standard, explicit prompt); " \
                       "ignored key(s): id, score"
    assert lines[2].endswith(f"chat template {TEMPLATE.origin}")
    assert len(data.examples) == 5 and [ex.source for ex in data.examples] == [str(standard)] * 3 + [
        str(implicit), str(conversational)]


def test_a_mix_of_formats_names_the_first_line_that_differs(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": "Q", "chosen": "a", "rejected": "b"},
        {"prompt": [1], "chosen": [2], "rejected": [3]},          # ids are standard too: no format change
        {"chosen": "Q a", "rejected": "Q b"},                     # line 3: implicit prompt
        {"prompt": "Q", "chosen": "a", "rejected": "b"},
        {"chosen": "Q a", "rejected": "Q b"},
    ])
    with pytest.raises(DataError) as info:
        read_preference_jsonl(path, TOK)
    message = str(info.value)
    assert message.startswith(f"{path}:3: format standard_implicit_prompt_preference (standard, implicit prompt) "
                              "differs from this file's standard_preference (set by line 1)")
    assert "1 more malformed line(s): 5" in message and info.value.line == 3


def test_conversational_file_without_a_template_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": [user("q")], "chosen": [assistant("a")],
                                               "rejected": [assistant("b")]}])
    with pytest.raises(DataError, match=r"c.jsonl:1: conversational records \(conversational_preference\) need a "
                                        "chat template"):
        read_preference_jsonl(path, TOK)
    # a template source is only asked when a file is conversational
    asked = []
    read_preference_jsonl(write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"}]), TOK,
                          chat_template=lambda: asked.append(1))
    assert asked == []


def test_conversational_tokens_follow_the_template_without_an_extra_eos(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": [user("q")], "chosen": [assistant("yes")],
                                               "rejected": [assistant("no")]}])
    (example,) = read_preference_jsonl(path, TOK, chat_template=TEMPLATE)
    assert example.prompt == ids("<user>:q|<assistant>:")
    assert example.chosen == ids("yes|") and example.rejected == ids("no|")   # the template ends the turn


# ---- the example files: each format, and the tokens it gives ---------------------------------------------------

EXAMPLE_FORMATS = {
    "standard.jsonl": "standard_preference",
    "standard_implicit_prompt.jsonl": "standard_implicit_prompt_preference",
    "token_ids.jsonl": "standard_preference",
    "conversational.jsonl": "conversational_preference",
    "conversational_implicit_prompt.jsonl": "conversational_implicit_prompt_preference",
}


def read_example(name):
    template = ChatTemplate.from_path(EXAMPLES / "chat_template.jinja")
    return read_preference_data(EXAMPLES / name, TOK, chat_template=template)


@pytest.mark.parametrize("name", sorted(EXAMPLE_FORMATS))
def test_example_file_is_detected_as_its_format(name):
    data = read_example(name)
    assert [r.format for r in data.files] == [EXAMPLE_FORMATS[name]] and len(data.examples) == 8


@pytest.mark.parametrize("implicit, explicit", [("standard_implicit_prompt.jsonl", "standard.jsonl"),
                                                ("token_ids.jsonl", "standard.jsonl"),
                                                ("conversational_implicit_prompt.jsonl", "conversational.jsonl")])
def test_example_twins_give_the_same_tokens(implicit, explicit):
    pairs = [[(ex.prompt, ex.chosen, ex.rejected) for ex in read_example(name).examples] for name in (implicit, explicit)]
    assert pairs[0] == pairs[1]


def test_standard_example_tokens_by_hand():
    first = read_example("standard.jsonl").examples[0]
    assert first.prompt == ids("Q: What color is the sky on a clear day?\nA:")
    assert first.chosen == ids(" Blue.") + [EOS] and first.rejected == ids(" Green.") + [EOS]


def test_conversational_example_tokens_by_hand():
    first = read_example("conversational.jsonl").examples[0]
    assert first.prompt == ids("<|system|>\nAnswer briefly.<|end|>\n<|user|>\nWhat color is the sky on a clear day?"
                               "<|end|>\n<|assistant|>\n")
    assert first.chosen == ids("Blue.<|end|>\n") and first.rejected == ids("Green.<|end|>\n")
