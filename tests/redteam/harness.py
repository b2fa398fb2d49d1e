"""What a red-team case is, how it runs (in this process, or the CLI as a real command line) and how its outcome is
judged, with the red-team report's verdicts:

- CLEAR ERROR: the expected refusal, one line naming the problem (CLI: exit status as expected, no traceback);
- OK: accepted and right (what the case's check verifies: a warning that counts what it did, a NaN by design...);
- TRACEBACK: a Python traceback (CLI), or an exception raised outside dpo_jax / dpo_torch (API);
- SILENT: accepted where it should not have been, or its check failed;
- UNCLEAR ERROR: refused, but the message does not match what the problem is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERDICTS = ("CLEAR ERROR", "OK", "TRACEBACK", "SILENT", "UNCLEAR ERROR")
OWN_PACKAGES = (os.path.join(ROOT, "dpo_jax"), os.path.join(ROOT, "dpo_torch"))


@dataclasses.dataclass(frozen=True)
class Expect:
    """`error`: a refusal whose message matches `pattern` (CLI: exit status `code`); `ok`: success, then
    `check(workspace, outcome)` returns None or what is wrong."""

    kind: str
    pattern: str = ""
    code: int = 2
    check: Callable | None = None


def error(pattern: str, code: int = 2) -> Expect:
    return Expect("error", pattern, code)


def ok(check: Callable | None = None) -> Expect:
    return Expect("ok", check=check)


@dataclasses.dataclass
class Outcome:
    """What happened: CLI exit status and streams, or the API call's value or exception."""

    code: int | None = None
    stdout: str = ""
    stderr: str = ""
    value: Any = None
    exception: BaseException | None = None
    exception_in_own_code: bool = False
    seconds: float = 0.0

    def message(self) -> str:
        if self.exception is not None:
            return f"{type(self.exception).__name__}: {self.exception}"
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the red-team table: its id, where it runs ("CLI" or "API"), what it does, the verdict of the
    2026-11-24 run, and what counts as right now. CLI cases give `argv(ws)`; API cases `call(ws)`."""

    id: str
    where: str
    what: str
    then: str
    expect: Expect
    argv: Callable | None = None
    call: Callable | None = None
    setup: Callable | None = None
    env: dict | None = None
    interrupt_after: float | None = None   # send SIGINT this long after the first logged step (CLI)
    subprocess_only: bool = False           # needs a real process (a missing package)


def verdict(case: Case, outcome: Outcome) -> tuple[str, str]:
    """(verdict, why) of an outcome against the case's expectation."""
    expect = case.expect
    if case.where == "CLI":
        if "Traceback (most recent call last)" in outcome.stderr:
            return "TRACEBACK", outcome.message()
        if outcome.code == 0:
            if expect.kind == "error":
                return "SILENT", "exit 0 where a refusal was expected"
            problem = expect.check(case, outcome) if expect.check else None
            return ("SILENT", problem) if problem else ("OK", "exit 0")
        if expect.kind == "error" and outcome.code == expect.code and re.search(expect.pattern, outcome.message()):
            return "CLEAR ERROR", outcome.message()
        return "UNCLEAR ERROR", f"exit {outcome.code}: {outcome.message()}"
    if outcome.exception is not None:
        if expect.kind == "error" and re.search(expect.pattern, outcome.message()):
            return "CLEAR ERROR", outcome.message()
        if not outcome.exception_in_own_code:
            return "TRACEBACK", outcome.message()
        return "UNCLEAR ERROR", outcome.message()
    if expect.kind == "error":
        return "SILENT", f"returned {outcome.value!r}"
    problem = expect.check(case, outcome) if expect.check else None
    return ("SILENT", problem) if problem else ("OK", f"returned {summarise(outcome.value)}")


def summarise(value) -> str:
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def _raised_in_own_code(error: BaseException) -> bool:
    """Whether the innermost frame of the exception's traceback is in dpo_jax or dpo_torch (a deliberate raise)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(OWN_PACKAGES)


def run_in_process(case: Case, ws) -> Outcome:
    """Run a case here: the CLI through `dpo_jax.cli.main(argv)` with captured streams, an API case as a call."""
    if case.setup is not None:
        case.setup(ws)
    began = time.perf_counter()
    if case.where == "API":
        try:
            value = case.call(ws)
        except Exception as err:  # noqa: BLE001 - the exception is the outcome being judged
            return Outcome(exception=err, exception_in_own_code=_raised_in_own_code(err),
                           seconds=time.perf_counter() - began)
        return Outcome(value=value, seconds=time.perf_counter() - began)
    from dpo_jax.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    if case.interrupt_after is not None:  # a Ctrl-C to this process, delivered to the main thread's handler
        threading.Thread(target=_interrupt_when_training, args=(None, ws, case, 600), daemon=True).start()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(case.argv(ws))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # noqa: BLE001 - an uncaught exception is a traceback the user would see
            traceback.print_exc(file=stderr)
            code = 1
    return Outcome(code=code, stdout=stdout.getvalue(), stderr=stderr.getvalue(), seconds=time.perf_counter() - began)


def run_command_line(case: Case, ws, *, timeout: float = 600) -> Outcome:
    """Run a CLI case as a user does: `python -m dpo_jax ...` in a fresh interpreter (exit races included)."""
    if case.setup is not None:
        case.setup(ws)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.update(case.env(ws) if callable(case.env) else (case.env or {}))
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "dpo_jax", *case.argv(ws)], env=env, cwd=ws.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if case.interrupt_after is not None:
        _interrupt_when_training(process, ws, case, timeout)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        stderr += f"\n(killed after {timeout} s)"
    return Outcome(code=process.returncode, stdout=stdout, stderr=stderr, seconds=time.perf_counter() - began)


def _interrupt_when_training(process, ws, case, timeout) -> None:
    """SIGINT (a Ctrl-C) `case.interrupt_after` seconds after the run logged its first step, to `process` (a
    Popen) or, when None, to this process."""
    metrics = os.path.join(ws.run_dir(case.id), "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while (process is None or process.poll() is None) and time.monotonic() < deadline:
        if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            time.sleep(case.interrupt_after)
            if process is None:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                process.send_signal(signal.SIGINT)
            return
        time.sleep(0.05)
