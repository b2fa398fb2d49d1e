"""The scratch folder the red-team cases run in: data files written on first use, base runs made once and copied."""

from __future__ import annotations

import os
import shutil


class Workspace:
    """`file(name)` writes `data/<name>` from `writers[name]` the first time; `run_dir(id)` is `runs/<id>`;
    `base_run(name, argv)` trains once (in this process) and `copy_run` gives each case its own copy."""

    def __init__(self, root, writers: dict):
        self.root = os.path.abspath(os.fspath(root))
        self.writers = writers
        self.case_id = None
        self._base_runs: dict[str, str] = {}
        for folder in ("data", "runs", "base"):
            os.makedirs(os.path.join(self.root, folder), exist_ok=True)

    def path(self, *parts) -> str:
        return os.path.join(self.root, *parts)

    def file(self, name: str) -> str:
        path = self.path("data", name)
        if not os.path.exists(path):
            self.writers[name](path, self)
        return path

    def run_dir(self, case_id: str | None = None) -> str:
        return self.path("runs", case_id or self.case_id)

    def base_run(self, name: str, argv_of) -> str:
        """A finished run made once per workspace by `dpo_jax.cli.main(argv_of(out_dir))`."""
        if name not in self._base_runs:
            import contextlib
            import io

            from dpo_jax.cli import main

            out = self.path("base", name)
            if os.path.exists(out):
                shutil.rmtree(out)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                code = main(argv_of(out))
            if code != 0:
                raise RuntimeError(f"base run {name} failed ({code}): {err.getvalue()[-2000:]}")
            self._base_runs[name] = out
        return self._base_runs[name]

    def copy_run(self, base: str, case_id: str | None = None) -> str:
        """A fresh copy of a base run at `runs/<case id>` (any older copy replaced)."""
        target = self.run_dir(case_id)
        if os.path.exists(target):
            shutil.rmtree(target)
        shutil.copytree(base, target)
        return target
