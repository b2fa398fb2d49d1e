"""Every input kind gives the same pairs as the JSONL it was written from, and names the bad record in its errors:
JSONL, JSON arrays, JSON Lines under a .json name, gzip, Parquet, datasets save_to_disk folders, several files."""

import gzip
import json
import sys

import pytest

from dpo_jax.data import ChatTemplate, DataError, open_records, read_preference_data, read_preference_jsonl
from dpo_jax.tokenizer import ByteTokenizer
from tests.data_helpers import EXAMPLES, conversational_rows, write_jsonl

TOK = ByteTokenizer()
TEMPLATE = ChatTemplate.from_path(EXAMPLES / "chat_template.jinja")
STANDARD = [json.loads(line) for line in (EXAMPLES / "standard.jsonl").read_text().splitlines()]
CONVERSATIONAL = conversational_rows(5)
IDS = [json.loads(line) for line in (EXAMPLES / "token_ids.jsonl").read_text().splitlines()]


def pairs(examples):
    return [(ex.prompt, ex.chosen, ex.rejected) for ex in examples]


def write_json(path, rows):
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def write_gzip_jsonl(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_gzip_json(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump(rows, handle)
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_dataset(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


WRITERS = {"json": write_json, "jsonl.gz": write_gzip_jsonl, "json.gz": write_gzip_json, "parquet": write_parquet,
           "datasets": write_dataset}
NAMES = {"json": "d.json", "jsonl.gz": "d.jsonl.gz", "json.gz": "d.json.gz", "parquet": "d.parquet",
         "datasets": "saved"}
UNITS = {"json": "record", "jsonl.gz": "line", "json.gz": "record", "parquet": "record", "datasets": "record"}


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("rows", [STANDARD, CONVERSATIONAL, IDS], ids=["standard", "conversational", "ids"])
def test_every_input_kind_reads_the_pairs_its_jsonl_twin_gives(tmp_path, kind, rows):
    expected = read_preference_jsonl(write_jsonl(tmp_path / "twin.jsonl", rows), TOK, chat_template=TEMPLATE)
    path = WRITERS[kind](tmp_path / NAMES[kind], rows)
    data = read_preference_data(path, TOK, chat_template=TEMPLATE)
    assert data.files[0].kind == kind
    assert pairs(data.examples) == pairs(expected)
    assert [ex.line for ex in data.examples] == list(range(1, len(rows) + 1))
    assert {ex.unit for ex in data.examples} == {UNITS[kind]}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_errors_name_the_record_of_every_input_kind(tmp_path, kind):
    rows = [dict(row) for row in STANDARD[:4]]
    rows[2]["chosen"] = ""  # record 3
    path = WRITERS[kind](tmp_path / NAMES[kind], rows)
    with pytest.raises(DataError) as info:
        read_preference_data(path, TOK)
    where = f"{path}:3" if UNITS[kind] == "line" else f"{path}: record 3"
    assert str(info.value).startswith(f"{where}: field 'chosen' is empty") and info.value.line == 3


def test_json_lines_under_a_json_name_and_blank_lines(tmp_path):
    path = tmp_path / "exported.json"   # what datasets' to_json writes by default
    path.write_text(json.dumps(STANDARD[0]) + "\n\n" + json.dumps(STANDARD[1]) + "\n", encoding="utf-8")
    data = read_preference_data(path, TOK)
    assert data.files[0].kind == "jsonl" and [ex.line for ex in data.examples] == [1, 3]


def test_a_parquet_file_is_read_by_its_content_whatever_its_name(tmp_path):
    path = write_parquet(tmp_path / "prefs.jsonl", STANDARD)   # misnamed: the magic bytes decide
    assert open_records(path).kind == "parquet"
    assert len(read_preference_jsonl(path, TOK)) == len(STANDARD)


def test_several_files_in_order(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", STANDARD[:3])
    second = write_parquet(tmp_path / "b.parquet", CONVERSATIONAL[:2])
    data = read_preference_data([first, second], TOK, chat_template=TEMPLATE)
    assert [(ex.source, ex.line) for ex in data.examples] == [(str(first), 1), (str(first), 2), (str(first), 3),
                                                              (str(second), 1), (str(second), 2)]
    assert [r.format for r in data.files] == ["standard_preference", "conversational_preference"]


@pytest.mark.parametrize("content, message", [
    (b"[1, 2", r"d.json:1: invalid JSON \(Expecting ',' delimiter at column 6\)"),
    (b'[\n{"prompt": "a", "chosen": "b", "rejected": "c"},\n"x"]', r"d.json: record 2: expected a JSON object"),
    (b"[\xff]", r"d.json: not valid UTF-8"),
])
def test_bad_json_arrays(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_preference_data(path, TOK)


def test_a_json_file_holding_one_object(tmp_path):
    path = tmp_path / "one.json.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("[" + json.dumps(STANDARD[0]) + "]")
    assert len(read_preference_data(path, TOK).examples) == 1
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"rows": STANDARD}, indent=2))   # an object over several lines: not a record list
    with pytest.raises(DataError, match="obj.json:1: invalid JSON"):
        read_preference_data(path, TOK)


def test_corrupt_gzip_and_parquet(tmp_path):
    truncated = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress("".join(json.dumps(dict(r, id=i)) + "\n" for i, r in enumerate(STANDARD * 100)).encode())
    for cut in (200, len(whole) - 10):   # ends within the first 4 kB of text / near the end
        truncated.write_bytes(whole[:cut])
        with pytest.raises(DataError, match="cut.jsonl.gz: gzip stream is corrupt or truncated"):
            read_preference_data(truncated, TOK)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        read_preference_data(bad, TOK)


def test_dataset_folders(tmp_path):
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(STANDARD),
                                   "test": datasets.Dataset.from_list(STANDARD[:2])})
    splits.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=r"is a saved DatasetDict \(splits: test, train\); pass one split's folder"):
        read_preference_data(tmp_path / "dict", TOK)
    assert len(read_preference_data(tmp_path / "dict" / "test", TOK).examples) == 2
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="is a folder but not a dataset written by datasets.Dataset.save_to_disk"):
        read_preference_data(tmp_path / "plain", TOK)


@pytest.mark.parametrize("kind, modules, extra", [("parquet", ("pyarrow", "pyarrow.parquet"), "parquet"),
                                                  ("datasets", ("datasets",), "datasets")])
def test_missing_optional_packages_name_their_extra(tmp_path, monkeypatch, kind, modules, extra):
    path = WRITERS[kind](tmp_path / NAMES[kind], STANDARD[:2])
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"pip install 'dpo-jax\[{extra}\]'"):
        read_preference_data(path, TOK)
