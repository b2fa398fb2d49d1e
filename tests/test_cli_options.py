"""Every option of `dpo-jax train` reaches the run it configures: each sets a RunConfig field (`cli.OPTION_FIELDS`,
so a new flag that is not wired in fails here, not silently in a run), each such field has its flag for the
messages of `--resume` (`run_dir.OPTION_FLAGS`), and `--help` shows every option's default."""

import argparse

from dpo_jax.cli import OPTION_FIELDS, add_train_arguments, build_parser
from dpo_jax.train.run_config import RESUMABLE_FIELDS, RunConfig, flat_fields
from dpo_jax.train.run_dir import OPTION_FLAGS

# options about processes or the run directory, not about what the run computes
NOT_RUN_FIELDS = {"help", "overwrite", "resume", "allow_changes", "coordinator", "num_processes", "process_id",
                  "init_timeout"}


def train_actions():
    parser = argparse.ArgumentParser(add_help=False)
    add_train_arguments(parser)
    return [action for action in parser._actions if action.dest != "help"]


def test_every_train_option_sets_a_run_config_field():
    fields = set(flat_fields(RunConfig()))
    for action in train_actions():
        if action.dest in NOT_RUN_FIELDS:
            continue
        assert action.dest in OPTION_FIELDS, f"{action.option_strings[0]} is not wired to a RunConfig field"
        assert OPTION_FIELDS[action.dest] in fields, (action.dest, OPTION_FIELDS[action.dest])


def test_every_trajectory_field_with_a_flag_is_named_by_it():
    for name, field in OPTION_FIELDS.items():
        if field in RESUMABLE_FIELDS or name in ("bf16",):
            continue
        assert field in OPTION_FLAGS, f"run_dir.OPTION_FLAGS lacks {field} (--{name.replace('_', '-')})"


def test_every_option_has_help_text():
    assert [action.option_strings[0] for action in train_actions() if not action.help] == []


def test_help_shows_every_default():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = train.format_help().replace("\n", " ")
    for action in train_actions():
        if action.default not in (None, False, argparse.SUPPRESS) and action.help:
            flag = action.option_strings[0]
            assert f"(default: {action.default})" in " ".join(text.split()), flag
