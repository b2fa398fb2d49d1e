"""The seed's `DPO` module: a policy, its frozen reference copy, and the preference loss between them.

Same constructor and forward signature as x-transformers 2.31 `dpo.py` (the seed), plus keyword options
for the loss family (DESIGN.md section 5), the reduction and the mask alignment (section 3). With
`mask_alignment="x_transformers"` and the defaults it reproduces `x_transformers.dpo.DPO` float for float.
"""

from copy import deepcopy

import torch
from torch.nn import Module

from dpo_torch.helpers import exists, freeze_all_layers_, masked_mean, maybe_and_mask
from dpo_torch.lora import check_adapters_start_at_zero, is_peft_model, reference_forward, trainable_parameters
from dpo_torch.logprobs import (
    MASK_ALIGNMENTS, REDUCTIONS, check_ld_reduction, ld_sequence_logprobs, log_prob_and_statistics_from_model_and_seq,
    log_prob_from_model_and_seq, scored_mask, sequence_logprobs, sequence_statistics,
)
from dpo_torch.losses import needs_reference, preference_loss, required_statistics, validate_loss_options
from dpo_torch.validation import (
    check_left_padding, check_model, check_scored_rows, model_max_seq_len, model_num_tokens, validate_dpo_inputs,
    validate_reference_logps,
)

__all__ = ["DPO", "exists", "freeze_all_layers_", "log_prob_from_model_and_seq", "masked_mean", "maybe_and_mask"]


class DPO(Module):
    """Direct Preference Optimization on an x-transformers `TransformerWrapper` or a transformers causal LM
    (`AutoModelForCausalLM`: its `.logits` are read; vocabulary and length limit come from `model.config`).

    `policy_model` is the model passed in (trained); `ref_model` is a frozen deepcopy taken at construction,
    always in eval mode and never given gradients. Reference-free losses (`loss_type` "simpo", "orpo", "sft",
    or a list of them) keep no copy: `ref_model` is None. `parameters()` yields the policy's parameters only, so
    an optimizer built from `dpo.parameters()` cannot touch the reference.

    `loss_type` may be a list with `loss_weights` (their weighted sum, e.g. RPO = ["sigmoid", "sft"]);
    `ld_alpha` is LD-DPO (reduction "sum"), `use_weighting` WPO, and `logits_metrics` adds TRL's
    `logits/chosen` and `logits/rejected` to the metrics.

    A `peft.PeftModel` (LoRA) is not copied: the reference is the same model with its adapters off, or, with
    `ref_adapter_name`, with that frozen adapter active instead of the trained one (continuing an adapter);
    `ref_model` is None and `parameters()` yields the trainable adapter parameters only. The trained adapter must
    start with one zero factor when the adapter-off model is the reference (`lora.check_adapters_start_at_zero`).
    """

    def __init__(self, model, *, beta=0.1, pad_id=None, loss_type="sigmoid", reduction="mean",
                 mask_alignment="next_token", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5,
                 loss_weights=None, ld_alpha=None, use_weighting=False, logits_metrics=False, ref_adapter_name=None):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")
        if mask_alignment not in MASK_ALIGNMENTS:
            raise ValueError(
                f"unknown mask_alignment {mask_alignment!r}; expected one of {', '.join(MASK_ALIGNMENTS)}"
            )
        if not isinstance(logits_metrics, bool):
            raise ValueError(f"logits_metrics must be True or False, got {logits_metrics!r}")
        validate_loss_options(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                              divergence=divergence, alpha=alpha, gamma=gamma,
                              has_reference=needs_reference(loss_type), loss_weights=loss_weights,
                              use_weighting=use_weighting, ld_alpha=ld_alpha, reduction=reduction)
        check_model(model)

        self.policy_model = model
        self.ref_model = None
        self.is_peft = is_peft_model(model)
        self.ref_adapter_name = ref_adapter_name
        if ref_adapter_name is not None:
            _check_reference_adapter(model, ref_adapter_name)
        if needs_reference(loss_type):
            if self.is_peft:  # the reference is the policy's own base: adapters off, or a frozen adapter on it
                if ref_adapter_name is None:
                    check_adapters_start_at_zero(model)
            else:
                self.ref_model = freeze_all_layers_(deepcopy(model))
                self.ref_model.eval()

        self.beta = beta
        self.pad_id = pad_id
        self.loss_type = loss_type
        self.reduction = reduction
        self.mask_alignment = mask_alignment
        self.label_smoothing = label_smoothing
        self.divergence = divergence
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weights = loss_weights
        self.ld_alpha = ld_alpha
        self.use_weighting = use_weighting
        self.logits_metrics = logits_metrics
        self.statistics = required_statistics(loss_type, use_weighting=use_weighting, logits_metrics=logits_metrics)

    @property
    def is_reference_free(self):
        return not needs_reference(self.loss_type)

    def parameters(self, recurse=True):
        """The policy's parameters only (the seed's contract): the reference is not trainable. For a PEFT model,
        the trainable adapter parameters only (the base is frozen)."""
        if self.is_peft:
            return trainable_parameters(self.policy_model, recurse=recurse)
        return self.policy_model.parameters(recurse=recurse)

    def train(self, mode=True):
        """Switch the policy's mode; the reference stays in eval whatever `mode` is (no dropout noise in it)."""
        super().train(mode)
        if exists(self.ref_model):
            self.ref_model.eval()
        return self

    def _scored_masks(self, preferred_seq, unpreferred_seq, prompt_mask, preferred_seq_mask, unpreferred_seq_mask):
        """Validate the batch and return the aligned [B, N-1] masks of the tokens each log-prob scores."""
        validate_dpo_inputs(
            preferred_seq, unpreferred_seq, prompt_mask=prompt_mask, preferred_seq_mask=preferred_seq_mask,
            unpreferred_seq_mask=unpreferred_seq_mask, num_tokens=model_num_tokens(self.policy_model),
            max_seq_len=model_max_seq_len(self.policy_model),
        )
        if exists(self.pad_id):
            if not exists(preferred_seq_mask):
                preferred_seq_mask = preferred_seq != self.pad_id
            if not exists(unpreferred_seq_mask):
                unpreferred_seq_mask = unpreferred_seq != self.pad_id
        if exists(self.pad_id):  # left padding is told by pad tokens: an explicit mask may drop any position
            check_left_padding(preferred_seq != self.pad_id, "preferred_seq")
            check_left_padding(unpreferred_seq != self.pad_id, "unpreferred_seq")

        chosen_mask = scored_mask(prompt_mask, preferred_seq_mask, self.mask_alignment)
        rejected_mask = scored_mask(prompt_mask, unpreferred_seq_mask, self.mask_alignment)
        check_scored_rows(chosen_mask, "preferred_seq")
        check_scored_rows(rejected_mask, "unpreferred_seq")
        return chosen_mask, rejected_mask

    def _sequence_logprobs(self, model, seq, mask):
        return sequence_logprobs(log_prob_from_model_and_seq(model, seq), mask, self.reduction)

    def _pair_logprobs(self, model, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask, statistics=()):
        """(chosen [B], rejected [B], chosen SequenceStats, rejected SequenceStats): the seed's path (one forward
        per sequence, log_softmax + gather) unless LD-DPO or statistics need the token log-probs and logits."""
        if self.ld_alpha is None and not statistics:
            return (self._sequence_logprobs(model, preferred_seq, chosen_mask),
                    self._sequence_logprobs(model, unpreferred_seq, rejected_mask), None, None)
        chosen_tokens, chosen_head = log_prob_and_statistics_from_model_and_seq(model, preferred_seq, statistics)
        rejected_tokens, rejected_head = log_prob_and_statistics_from_model_and_seq(model, unpreferred_seq, statistics)
        check_ld_reduction(self.ld_alpha, self.reduction)
        if self.ld_alpha is None:
            chosen = sequence_logprobs(chosen_tokens, chosen_mask, self.reduction)
            rejected = sequence_logprobs(rejected_tokens, rejected_mask, self.reduction)
        else:
            chosen, rejected = ld_sequence_logprobs(chosen_tokens, rejected_tokens, chosen_mask, rejected_mask,
                                                    self.ld_alpha)
        return (chosen, rejected, sequence_statistics(chosen_tokens, chosen_mask, statistics, chosen_head),
                sequence_statistics(rejected_tokens, rejected_mask, statistics, rejected_head))

    @torch.no_grad()
    def _reference_logprobs(self, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask):
        if self.is_peft:
            with reference_forward(self.policy_model, self.ref_adapter_name) as reference:
                return self._pair_logprobs(reference, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask)[:2]
        self.ref_model.eval()
        return self._pair_logprobs(self.ref_model, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask)[:2]

    def reference_logprobs(self, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                           unpreferred_seq_mask=None):
        """Reference log-probs (chosen [B], rejected [B]), to compute once and pass as `reference_logps`.

        They are reduced with this module's `reduction`, `mask_alignment` and `ld_alpha`; pass them back only to a
        module with the same options (and the same pad_id / masks), or the loss mixes incompatible numbers.
        """
        if self.is_reference_free:
            raise ValueError(f"loss_type {self.loss_type!r} is reference-free: there is no reference model")
        chosen_mask, rejected_mask = self._scored_masks(
            preferred_seq, unpreferred_seq, prompt_mask, preferred_seq_mask, unpreferred_seq_mask)
        return self._reference_logprobs(preferred_seq, unpreferred_seq, chosen_mask, rejected_mask)

    def forward(self, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                unpreferred_seq_mask=None, reference_logps=None, return_metrics=False):
        """Scalar loss (batch mean), or `(loss, metrics)` with TRL's metric names when `return_metrics`.

        Masks are [B, N] bool per input token; `prompt_mask` is True on prompt tokens. With `pad_id` set, a
        missing sequence mask is `seq != pad_id`. The models see no mask (right padding is causal-safe), as in
        x-transformers. `reference_logps=(chosen [B], rejected [B])` replaces the reference forward pass.
        """
        chosen_mask, rejected_mask = self._scored_masks(
            preferred_seq, unpreferred_seq, prompt_mask, preferred_seq_mask, unpreferred_seq_mask)

        ref_chosen = ref_rejected = None
        if self.is_reference_free:
            if exists(reference_logps):
                raise ValueError(f"loss_type {self.loss_type!r} is reference-free; reference_logps must be None")
        elif exists(reference_logps):
            validate_reference_logps(reference_logps, preferred_seq.shape[0])
            ref_chosen, ref_rejected = (logps.detach() for logps in reference_logps)
        else:
            ref_chosen, ref_rejected = self._reference_logprobs(
                preferred_seq, unpreferred_seq, chosen_mask, rejected_mask)

        policy_chosen, policy_rejected, chosen_stats, rejected_stats = self._pair_logprobs(
            self.policy_model, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask, self.statistics)

        loss, metrics = preference_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=self.beta, loss_type=self.loss_type,
            label_smoothing=self.label_smoothing, divergence=self.divergence, alpha=self.alpha, gamma=self.gamma,
            loss_weights=self.loss_weights, use_weighting=self.use_weighting, chosen_stats=chosen_stats,
            rejected_stats=rejected_stats,
        )
        return (loss, metrics) if return_metrics else loss


def _check_reference_adapter(model, name):
    """`ref_adapter_name` names a frozen adapter of a PEFT model other than the trained one."""
    if not is_peft_model(model):
        raise ValueError("ref_adapter_name needs a peft.PeftModel (a frozen adapter loaded beside the trained one)")
    if name not in model.peft_config:
        raise ValueError(f"ref_adapter_name {name!r} is not an adapter of the model: {sorted(model.peft_config)}")
    if name == model.active_adapter:
        raise ValueError(f"ref_adapter_name {name!r} is the adapter being trained; load a frozen copy under another "
                         "name (peft_model.load_adapter(dir, adapter_name='ref'))")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and f".{name}." in n]
    if trainable:
        raise ValueError(f"the reference adapter {name!r} is trainable ({trainable[0]}); load it with "
                         "is_trainable=False so the reference stays frozen")
