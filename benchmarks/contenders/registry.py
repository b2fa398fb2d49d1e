"""The registry of contenders: `CONTENDERS = {name: factory}`, filled by the `@contender` decorator.

`factory(setup, batch, config) -> step`, where `step()` runs one full training step (loss, backward,
optimizer update; or the loss head's fwd+bwd) and blocks until the device is done, returning the loss as a
float. Adding a contender is one decorated function in one of the sibling modules:

    @contender("dpo_jax_plain", framework="jax")
    def dpo_jax_plain(setup, batch, config): ...

`framework` tells the worker which model to build in `setup` before it takes the memory baseline:
"torch" gives `setup.torch_model` (the seed-built TransformerWrapper on the torch device), "jax" gives
`setup.jax_model` (the same weights through `dpo_jax.from_torch`; the torch copy is dropped first).
`preload` names modules the worker imports before that baseline too (e.g. "peft"), so that a contender's
memory growth is what it builds, not the code it imports.
This module imports none of its siblings.
"""

from __future__ import annotations

from typing import Callable

CONTENDERS: dict[str, Callable] = {}


def contender(name: str, *, framework: str, preload: tuple[str, ...] = ()):
    def register(factory):
        factory.framework = framework
        factory.preload = tuple(preload)
        CONTENDERS[name] = factory
        return factory
    return register
