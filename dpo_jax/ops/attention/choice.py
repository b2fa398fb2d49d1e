"""Which backend computes an `attend` call: an explicit one or a clear error, or "auto"'s pick, logged.

"auto" takes the fastest backend that can express the call on its platform and falls back to "xla":

- CPU: always "xla" (the einsum oracle), so "auto" changes nothing on CPU;
- NVIDIA GPU: "cudnn" for bfloat16/float16 calls it can express. A call that needs a mask tensor (packed or
  prefix-shared rows) goes to cuDNN only from jax 0.11.1 on: before, its backward computed a bias gradient the
  size of the scores for nothing (`dot_product.MASKED_CUDNN_MIN_JAX`). float32 stays on "xla";
- TPU: "splash" where it can express the call (causal or local masks, segment ids, softcap), else "xla".

Each decision is made at trace time, logged once (`logging.getLogger("dpo_jax.attention")`, INFO) and
counted in `attention_report()`, which the train loop and the benchmarks print: that is how a run log says
which backend "auto" chose.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

from dpo_jax.ops.attention import dot_product, einsum, splash
from dpo_jax.ops.attention.call import AttentionCall

LOG = logging.getLogger("dpo_jax.attention")

# name -> (function, refusal): refusal(call) is None when the backend can compute the call, else the reason
BACKENDS = {
    "xla": (einsum.einsum_attention, einsum.unsupported),
    "jax_nn": (dot_product.jax_nn_attention, dot_product.unsupported_jax_nn),
    "cudnn": (dot_product.cudnn_attention, dot_product.unsupported_cudnn),
    "splash": (splash.splash_attention, splash.unsupported),
}
ATTENTION_BACKENDS = ("auto",) + tuple(BACKENDS)
FAST_BACKEND = {"gpu": "cudnn", "tpu": "splash"}  # the candidate "auto" tries first on each platform

_REPORT: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class Choice:
    requested: str
    backend: str
    reason: str
    call: str  # AttentionCall.describe()

    def line(self) -> str:
        how = "" if self.requested == self.backend else f" (requested {self.requested!r})"
        return f"attention {self.backend}{how}: {self.reason} [{self.call}]"


def validate_backend(backend: str) -> None:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")


def refusal(backend: str, call: AttentionCall) -> str | None:
    return BACKENDS[backend][1](call)


def auto_preference(call: AttentionCall) -> tuple[str, str] | None:
    """(backend, reason) "auto" prefers over "xla" for this call, or None."""
    fast = FAST_BACKEND.get(call.platform.name)
    if fast is None:
        return None
    reason = refusal(fast, call)
    if reason is not None:
        return None
    if fast == "cudnn" and dot_product.needs_mask_tensor(call) and \
            dot_product.jax_version() < dot_product.MASKED_CUDNN_MIN_JAX:
        return None
    return fast, f"fastest applicable on {call.platform.name}"


def choose(requested: str, call: AttentionCall) -> Choice:
    """The backend for `call`: the requested one (ValueError naming what it cannot do), or "auto"'s pick."""
    validate_backend(requested)
    if requested != "auto":
        reason = refusal(requested, call)
        if reason is not None:
            raise ValueError(f"attention backend {requested!r} cannot compute this call: {reason}. "
                             f"Use attention='auto' to fall back to a backend that can, or 'xla'.")
        return Choice(requested, requested, "requested", call.describe())
    preferred = auto_preference(call)
    if preferred is not None:
        return Choice("auto", preferred[0], preferred[1], call.describe())
    fast = FAST_BACKEND.get(call.platform.name)
    if fast is None:
        why = f"the einsum path on {call.platform.name}"
    elif refusal(fast, call) is not None:
        why = f"fallback: {refusal(fast, call)}"
    else:
        why = (f"fallback: {fast} with a mask tensor needs jax >= "
               f"{'.'.join(map(str, dot_product.MASKED_CUDNN_MIN_JAX))}")
    return Choice("auto", "xla", why, call.describe())


def record(choice: Choice) -> None:
    """Count the decision; log it the first time it is made."""
    line = choice.line()
    if line not in _REPORT:
        LOG.info(line)
    _REPORT[line] += 1


def attention_report() -> dict[str, int]:
    """{decision line: number of attention calls traced with it} since the last reset."""
    return dict(_REPORT)


def reset_attention_report() -> None:
    _REPORT.clear()
