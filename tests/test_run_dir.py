"""The run directory rules without training (`dpo_jax.train.run_dir`, `fingerprint`, `dpo_jax.files`): a new run
refuses a directory holding a run, --overwrite moves it aside (never deletes it), a resume refuses changed options
and data naming each, --allow-changes records them, and every file is written with the mode open() gives."""

import json
import os

import pytest

from dpo_jax.files import atomic_write_text
from dpo_jax.train.fingerprint import run_fingerprint
from dpo_jax.train.outputs import MetricsLog, write_json
from dpo_jax.train.run_config import RunConfig, load_run_config, replace_fields
from dpo_jax.train.run_dir import (CHANGES_FILE, RunDirError, check_new_run, check_resume, check_resumed_data,
                                   create_new_run, record_resume)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n')
    return str(path)


def new_run(tmp_path, data_file, **fields):
    config = RunConfig(out_dir=str(tmp_path / "run"), data=data_file, **fields)
    check_new_run(config.out_dir, overwrite=config.overwrite)
    return config, create_new_run(config, run_fingerprint(config), log=lambda message: None)


def with_checkpoint(run_dir, step=2):
    os.makedirs(os.path.join(run_dir, "checkpoints", str(step)))


def test_a_new_run_refuses_a_directory_holding_a_run_and_overwrite_moves_it_aside(tmp_path, data_file):
    _, run_dir = new_run(tmp_path, data_file)
    MetricsLog(run_dir).append(1, {"loss": 0.5})
    with pytest.raises(RunDirError, match=r"holds a run \(run_config.json, 1 logged step.*--resume.*--overwrite"):
        check_new_run(run_dir, overwrite=False)
    messages = []
    config = RunConfig(out_dir=run_dir, data=data_file, overwrite=True)
    create_new_run(config, run_fingerprint(config), log=messages.append)
    aside = [name for name in os.listdir(tmp_path) if name.startswith("run.replaced-")]
    assert len(aside) == 1 and os.path.exists(tmp_path / aside[0] / "metrics.jsonl")  # moved, not deleted
    assert aside[0] in messages[0] and not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))


def test_a_resume_names_each_changed_option_and_allow_changes_records_them(tmp_path, data_file):
    _, run_dir = new_run(tmp_path, data_file)
    with_checkpoint(run_dir)
    changed = replace_fields(load_run_config(run_dir), {"train.beta": 0.5, "seed": 3, "steps": 10})
    with pytest.raises(RunDirError, match="would change its training trajectory") as refused:
        check_resume(changed)
    assert "--beta 0.5 (the run has 0.1)" in str(refused.value) and "--seed 3 (the run has 0)" in str(refused.value)
    assert "--steps" not in str(refused.value)
    changed.allow_changes = True
    _, fingerprint, changes = check_resume(changed)
    assert len(changes) == 2  # --steps is honoured, not a change of the trajectory
    record_resume(changed, fingerprint, changes, step=2)
    with open(os.path.join(run_dir, CHANGES_FILE)) as handle:
        record = json.loads(handle.read())
    assert record["resumed_at_step"] == 2 and record["changes"] == changes
    assert load_run_config(run_dir).train.beta == 0.5  # the config now in force


def test_a_resume_refuses_changed_data_and_a_run_without_checkpoints(tmp_path, data_file):
    config, run_dir = new_run(tmp_path, data_file)
    with pytest.raises(RunDirError, match="no checkpoint to resume from"):
        check_resume(load_run_config(run_dir))
    with_checkpoint(run_dir)
    _, stored, _ = check_resume(load_run_config(run_dir))
    with open(data_file, "a") as handle:
        handle.write('{"prompt": "d", "chosen": " e", "rejected": " f"}\n')
    with pytest.raises(RunDirError, match=r"data file .*prefs.jsonl changed"):
        check_resumed_data(load_run_config(run_dir), stored, run_fingerprint(config))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_run_files_get_the_mode_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
        write_json(tmp_path / "summary.json", {"a": 1})
        MetricsLog(str(tmp_path)).append(1, {"loss": 0.5})
    finally:
        os.umask(previous)
    expected = os.stat(plain).st_mode & 0o777
    assert expected == 0o666 & ~umask
    for name in ("atomic.txt", "summary.json", "metrics.jsonl"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == expected, name
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
