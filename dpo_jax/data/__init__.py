"""Preference data: files in the formats users publish them in -> validated token ids -> padded DPO batches.

Pure numpy on the host (no jax), one concept per module:

- `readers.py`: JSONL, JSON arrays, gzip, Parquet and `datasets` save_to_disk folders -> numbered records.
- `formats.py`: TRL's four preference formats (standard / conversational, explicit / implicit prompt).
- `chat.py`: chat templates rendered as transformers renders them, with the prompt/completion boundary check.
- `encoding.py`: a record's pair -> token ids (eos handling); `loading.py`: whole files, validated, with reports.
- `examples.py`: PreferenceExample and truncation; `collate.py`: padded arrays (`PreferenceBatch`).
- `batching.py`: seeded random-access batches (`PreferenceDataset`); `splits.py`: a seeded held-out split.
- `summary.py`: what `dpo-jax inspect-data` prints; `display.py`: token ids as text; `errors.py`: DataError.
"""

from dpo_jax.data.batching import PreferenceDataset, batch_iterator
from dpo_jax.data.chat import ChatTemplate, ChatTemplateError, find_chat_template
from dpo_jax.data.collate import PreferenceBatch, check_collate_options, collate_pairs
from dpo_jax.data.errors import DataError
from dpo_jax.data.examples import TRUNCATION_POLICIES, PreferenceExample, truncated_lengths
from dpo_jax.data.formats import FORMATS, extract_prompt, parse_record
from dpo_jax.data.loading import (FileReport, PreferenceData, read_preference_data, read_preference_file,
                                  read_preference_jsonl)
from dpo_jax.data.readers import INPUT_KINDS, open_records, write_preference_jsonl
from dpo_jax.data.splits import split_examples
from dpo_jax.data.summary import inspect_report

__all__ = [
    "DataError", "PreferenceExample", "PreferenceBatch", "PreferenceDataset", "TRUNCATION_POLICIES",
    "read_preference_jsonl", "write_preference_jsonl", "collate_pairs", "batch_iterator", "truncated_lengths",
    "check_collate_options",
    # formats, inputs, chat templates, held-out splits, inspection
    "FORMATS", "INPUT_KINDS", "parse_record", "extract_prompt", "open_records", "ChatTemplate", "ChatTemplateError",
    "find_chat_template", "FileReport", "PreferenceData", "read_preference_data", "read_preference_file",
    "split_examples", "inspect_report",
]
