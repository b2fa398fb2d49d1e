"""Training: the configuration, the state, the one train-step factory, and the resumable run around it.

- `config.py`: TrainConfig (loss, optimizer, reference, forward options).
- `state.py`: TrainState, init_train_state.
- `step.py`: make_train_step (every layout, optionally sharded), make_eval_loss.
- `optim.py`: optax optimizers and schedules matching their torch counterparts.
- `reference.py`: precomputed reference log-probs, cached by batch content.
- `checkpoint.py`: orbax checkpoints of the TrainState; `outputs.py`: metrics.jsonl, summary.json, plot.
- `run_config.py`: RunConfig and run_config.json; `run_dir.py`: the rules of a run directory (new, overwrite,
  resume, changes); `fingerprint.py`: what the data is, by content.
- `task.py`: the policy, reference and pairs a run trains on; `interrupt.py`: Ctrl-C at a step boundary.
- `loop.py`: `run(config)`, the whole run behind `dpo-jax train`.
- `pretrained.py`: a run from a Hugging Face directory (`--model`), and how the final policy is written.
"""

from dpo_jax.train.checkpoint import Checkpointer
from dpo_jax.train.config import TrainConfig
from dpo_jax.train.interrupt import RunInterrupted
from dpo_jax.train.loop import NonFiniteError, run
from dpo_jax.train.run_config import RunConfig, load_run_config
from dpo_jax.train.run_dir import RunDirError
from dpo_jax.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from dpo_jax.train.reference import ReferenceCache, batch_key
from dpo_jax.train.state import TrainState, copy_tree, init_train_state
from dpo_jax.train.step import (accumulated_grads, make_eval_loss, make_loss_fn, make_sharded_train_step,
                                make_train_step, sync_reference)

__all__ = ["TrainConfig", "TrainState", "init_train_state", "copy_tree", "make_train_step", "make_sharded_train_step",
           "make_eval_loss", "make_loss_fn", "accumulated_grads", "sync_reference", "make_optimizer", "make_schedule",
           "OPTIMIZERS", "SCHEDULES", "ReferenceCache", "batch_key", "Checkpointer", "RunConfig", "run",
           "load_run_config", "NonFiniteError", "RunInterrupted", "RunDirError"]
