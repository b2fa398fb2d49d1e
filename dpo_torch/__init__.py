"""Reference PyTorch DPO on x-transformers and transformers causal LMs: the seed's `DPO` module, its helpers and the loss family."""

from dpo_torch.dpo import DPO
from dpo_torch.helpers import exists, freeze_all_layers_, masked_mean, maybe_and_mask
from dpo_torch.logprobs import log_prob_from_model_and_seq, scored_mask, sequence_logprobs, token_logprobs
from dpo_torch.losses import DIVERGENCES, LOSS_TYPES, pair_losses, preference_loss
from dpo_torch.validation import validate_dpo_inputs

__all__ = [
    "DPO",
    "exists", "freeze_all_layers_", "log_prob_from_model_and_seq", "masked_mean", "maybe_and_mask",
    "preference_loss", "pair_losses", "LOSS_TYPES", "DIVERGENCES",
    "scored_mask", "sequence_logprobs", "token_logprobs", "validate_dpo_inputs",
]
