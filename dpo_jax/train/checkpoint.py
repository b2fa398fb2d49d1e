"""Orbax checkpoints of a TrainState plus the run's JSON metadata (configs, data position, RNG).

Each checkpoint is a step folder `checkpoints/<step>/` with two items: `state` (every array of the TrainState,
keyed by its pytree path) and `meta` (JSON: step, seed, TrainConfig, model config, anything the caller adds).
Orbax writes a step into a temporary folder (`<step>.orbax-checkpoint-tmp-*`) and renames it when complete,
and `all_steps()` lists only finished step folders, so a run killed mid-save resumes from the previous
checkpoint. Saves are synchronous (no background thread racing a kill). The newest `keep` are kept.

`restore_newest_intact` is what a resume uses: a newest checkpoint that cannot be read (truncated files, a disk
that filled up) is moved aside to `<run>/corrupt_checkpoints/` (never deleted), with a message, and the next older
one is restored; only when none can be read is it an error.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from dpo_jax.train.state import saved_part, with_frozen_part


def _leaf_name(path) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", jax.tree_util.keystr(path)).strip("_")


def state_to_arrays(state) -> dict[str, jax.Array]:
    """Flat {path name: array} view of a pytree (orbax-friendly names, independent of nnx internals)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        name = _leaf_name(path)
        if name in flat:
            raise ValueError(f"two leaves map to the checkpoint name {name!r}")
        flat[name] = leaf
    return flat


def arrays_to_state(arrays: dict, template):
    """Rebuild a pytree shaped like `template` from `state_to_arrays` output."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    missing = [_leaf_name(p) for p, _ in leaves_with_path if _leaf_name(p) not in arrays]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} array(s) of the state, e.g. {missing[:3]}")
    leaves = []
    for path, leaf in leaves_with_path:
        value = arrays[_leaf_name(path)]
        if np.shape(value) != np.shape(leaf):
            raise ValueError(f"{_leaf_name(path)}: checkpoint shape {np.shape(value)} != state {np.shape(leaf)}")
        leaves.append(jax.numpy.asarray(value, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


class Checkpointer:
    """Save / restore (TrainState, meta dict) under `directory`, keeping the newest `keep` steps."""

    def __init__(self, directory, *, keep: int = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        with _quiet_orbax():  # a damaged step's metadata is logged here; restore_newest_intact reports it itself
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state, meta: dict) -> None:
        arrays = state_to_arrays(saved_part(state))
        self._manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                              meta=ocp.args.JsonSave(dict(meta, step=int(step)))),
                           force=True)
        self._manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, template, step: int | None = None, *, shardings=None):
        """(state shaped like `template`, meta) of `step` (default: the latest finished checkpoint).

        Arrays are restored straight onto `shardings` (a pytree like `template` of `jax.sharding.Sharding`,
        e.g. `sharding.state_shardings(template, mesh)`), or else onto the template leaves' own shardings:
        a checkpoint saved on one mesh restores onto any other mesh shape (orbax reads each device's slice).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        full_template, template = template, saved_part(template)
        if shardings is None:
            shardings = jax.tree.map(lambda leaf: getattr(leaf, "sharding", None), template)
        targets = state_to_arrays(saved_part(shardings))
        abstract = {name: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=targets.get(name))
                    for name, leaf in state_to_arrays(template).items()}
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                       meta=ocp.args.JsonRestore()))
        return with_frozen_part(arrays_to_state(restored["state"], template), full_template), restored["meta"]

    def restore_newest_intact(self, template, *, shardings=None, log=print):
        """(state, meta, step) of the newest checkpoint that restores; unreadable newer ones are moved aside.
        orbax's own log lines about a damaged step (listing, reading) are silenced: this reports each one."""
        failures = []
        with _quiet_orbax():
            steps = self.all_steps()
        for step in reversed(steps):
            try:
                with _quiet_orbax():
                    state, meta = self.restore(template, step, shardings=shardings)
            except Exception as err:  # noqa: BLE001 - any failure to read a checkpoint means it is unusable
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                with _quiet_orbax():
                    aside = self._move_aside(step)
                failures.append(f"step {step} ({reason})")
                log(f"dpo-jax: checkpoint {step} is unreadable ({reason}); moved to {aside}, trying the previous one")
                continue
            if failures:
                log(f"dpo-jax: resuming from step {step}, the newest intact checkpoint")
            return state, meta, step
        raise ValueError(f"no intact checkpoint in {self.directory}: {'; '.join(failures) or 'none saved'}")

    def _move_aside(self, step: int) -> str:
        run_dir = os.path.dirname(self.directory)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = os.path.join(run_dir, "corrupt_checkpoints", f"{step}-{stamp}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), target)
        self._manager.reload()
        return target

    def close(self) -> None:
        self._manager.close()


@contextlib.contextmanager
def _quiet_orbax():
    """orbax and tensorstore log every failed read with its traceback; the caller reports the failure itself."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "orbax.checkpoint")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
