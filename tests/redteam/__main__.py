"""`python -m tests.redteam [--only ID ...] [--report FILE] [--workspace DIR] [--in-process]`: re-run the red-team
cases and print (and write) the table with today's verdict of each row next to the 2026-11-24 one, and the counts.

CLI cases run as `python -m dpo_jax ...` in a fresh interpreter each (what a user sees, exit races included) unless
`--in-process`; API cases run in this process.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

from tests.redteam.cases import CASES
from tests.redteam.data_files import WRITERS
from tests.redteam.harness import VERDICTS, run_command_line, run_in_process, verdict
from tests.redteam.workspace import Workspace


def run_case(case, ws, *, in_process: bool):
    ws.case_id = case.id
    try:
        if case.where == "CLI" and (case.subprocess_only or not in_process):
            outcome = run_command_line(case, ws)
        else:
            outcome = run_in_process(case, ws)
    except Exception as err:  # noqa: BLE001 - a case whose setup failed is reported, not fatal
        return "SETUP FAILED", f"{type(err).__name__}: {err}", 0.0
    result, why = verdict(case, outcome)
    return result, why, outcome.seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.redteam", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="these case ids only")
    parser.add_argument("--report", metavar="FILE", help="also write the markdown table here")
    parser.add_argument("--workspace", metavar="DIR", help="scratch folder (default: a new temporary one)")
    parser.add_argument("--in-process", action="store_true", help="run CLI cases through cli.main (faster)")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    ws = Workspace(args.workspace or tempfile.mkdtemp(prefix="dpo-redteam-"), WRITERS)
    unknown = sorted(set(args.only or ()) - set(CASES))
    if unknown:
        parser.error(f"unknown case id(s) {unknown}")
    cases = [CASES[i] for i in args.only] if args.only else list(CASES.values())
    rows, counts, changed = [], collections.Counter(), []
    began = time.perf_counter()
    for number, case in enumerate(cases, start=1):
        result, why, seconds = run_case(case, ws, in_process=args.in_process)
        counts[result] += 1
        if result != case.then:
            changed.append(case.id)
        why = why.replace("|", "\\|").replace("\n", " ")[:300]
        rows.append(f"| {number} | {case.where} | {case.id} | {case.what} | {case.then} | **{result}** | "
                    f"{seconds:.1f} s | {why} |")
        print(f"{case.id:6s} {case.then:13s} -> {result:13s} {seconds:6.1f} s  {why[:140]}", file=sys.stderr,
              flush=True)
    total = time.perf_counter() - began
    summary = ", ".join(f"{name} {counts[name]}" for name in (*VERDICTS, "SETUP FAILED") if counts[name])
    lines = [f"{len(cases)} cases in {total:.0f} s: {summary}", "",
             "| # | where | id | case | 2026-11-24 | now | time | message or check |",
             "|---|---|---|---|---|---|---|---|", *rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        with open(args.report, "w") as handle:
            handle.write(text)
    bad = counts["TRACEBACK"] + counts["SILENT"] + counts["SETUP FAILED"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
