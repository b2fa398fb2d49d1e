"""The red-team run of 2026-11-24, replayable: every case of its table (`cases.CASES`), how a case runs and is
judged (`harness`), its input files (`data_files`) and API calls (`api_calls`).

`python -m tests.redteam` re-runs all 197 cases (CLI cases as real command lines) and prints the table with the
new verdicts and their counts (about 15 minutes on 2 CPU cores); `tests/test_redteam.py` runs the rows that were
TRACEBACK, SILENT or UNCLEAR ERROR, in-process, as part of the test suite.
"""
