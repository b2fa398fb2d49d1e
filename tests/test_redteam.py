"""Every row of the 2026-11-24 red-team table that ended in a traceback, was accepted silently or refused unclearly
is now a clear error (the expected message; CLI: exit status 2 and no traceback) or a deliberate, checked
behaviour (tests/redteam/cases.py says which, row by row). One test per row, named by its id.

CLI rows run through `dpo_jax.cli.main` in this process (Ctrl-C included: a SIGINT to this process), except the one
that needs a real process (a missing package). `python -m tests.redteam` re-runs all 197 rows as real command
lines.
"""

import pytest

from tests.redteam.cases import CASES, TARGET_ROWS
from tests.redteam.data_files import WRITERS
from tests.redteam.harness import run_command_line, run_in_process, verdict
from tests.redteam.workspace import Workspace

RIGHT = ("CLEAR ERROR", "OK")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("redteam"), WRITERS)


def run_row(row, workspace):
    case = CASES[row]
    workspace.case_id = case.id
    if case.where == "CLI" and case.subprocess_only:
        return case, run_command_line(case, workspace, timeout=300)
    return case, run_in_process(case, workspace)


@pytest.mark.parametrize("row", TARGET_ROWS)
def test_row(row, workspace):
    case, outcome = run_row(row, workspace)
    result, why = verdict(case, outcome)
    assert result in RIGHT, f"{row} ({case.what}): {result}: {why}\nstderr: {outcome.stderr[-3000:]}"
    if row == "o22a":  # Ctrl-C printed the resume command; o22b runs it and the run goes on where it stopped
        assert outcome.message().split("resume with: ")[1] == f"dpo-jax train --resume {workspace.run_dir('o22a')}"
        resumed_case, resumed = run_row("o22b", workspace)
        result, why = verdict(resumed_case, resumed)
        assert result == "OK", f"o22b: {result}: {why}\nstderr: {resumed.stderr[-3000:]}"
