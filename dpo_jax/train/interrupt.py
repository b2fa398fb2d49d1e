"""Ctrl-C during training: finish the step in flight, checkpoint it, and say how to resume.

`StopRequest` installs a SIGINT handler for the duration of the training loop (main thread of a single-process
run only: with several processes every one would have to stop at the same step, so there Ctrl-C keeps Python's
KeyboardInterrupt). The first Ctrl-C only sets a flag that the loop reads after each step; a second one restores
the default handler's behaviour (KeyboardInterrupt at once).
"""

from __future__ import annotations

import signal
import threading

__all__ = ["RunInterrupted", "StopRequest"]


class RunInterrupted(Exception):
    """The run stopped on Ctrl-C after `step`, checkpointed (or, when `checkpointed` is False, at its last one)."""

    def __init__(self, step: int, num_steps: int, run_dir: str, checkpoint_step: int | None):
        self.step, self.num_steps, self.run_dir, self.checkpoint_step = step, num_steps, run_dir, checkpoint_step
        super().__init__(f"interrupted at step {step} of {num_steps}")


class StopRequest:
    """`with StopRequest() as stop: ... if stop.requested: ...`"""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False
