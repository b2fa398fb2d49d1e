"""`DPO(mask_alignment="x_transformers")` reproduces `x_transformers.dpo.DPO` (2.31.10) float for float.

Both modules deep-copy their reference at construction, so both are built from the same unperturbed model
(identical references), then identical perturbed weights are loaded into both policies. The computation
is the same sequence of float32 ops in the same order (log_softmax + gather, masked_fill + sum / count,
(pc - pr) - (rc - rr), -logsigmoid(beta z), mean), so the losses are compared with torch.equal.
"""

from copy import deepcopy

import numpy as np
import pytest
import torch
from x_transformers import Decoder, TransformerWrapper
from x_transformers.dpo import DPO as XDPO

from dpo_torch import DPO, scored_mask
from parity_tests.numpy_oracle import oracle_scored

NUM_TOKENS = 64
MAX_SEQ_LEN = 32
PAD = 0


def _randomised_model(seed, **attn_kwargs):
    """Tiny decoder with every parameter (norm gains included) moved off its initial value."""
    torch.manual_seed(seed)
    model = TransformerWrapper(num_tokens=NUM_TOKENS, max_seq_len=MAX_SEQ_LEN,
                               attn_layers=Decoder(dim=32, depth=2, heads=2, **attn_kwargs))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def _pair_of_dpos(seed, **attn_kwargs):
    """Ours and x-transformers', identical references, identical perturbed policies."""
    model = _randomised_model(seed, **attn_kwargs)
    ours = DPO(deepcopy(model), beta=0.1, pad_id=None, mask_alignment="x_transformers")
    theirs = XDPO(deepcopy(model), beta=0.1, pad_id=None)
    with torch.no_grad():
        for param in ours.policy_model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    theirs.policy_model.load_state_dict(ours.policy_model.state_dict())
    return ours, theirs


@pytest.fixture(scope="module", params=[{}, {"rotary_pos_emb": True}], ids=["abs_pos", "rotary"])
def dpo_pair(request):
    return _pair_of_dpos(0, **request.param)


def _random_batch(rng, pad_id):
    """Right-padded pairs with per-row prompt lengths; every row keeps >= 2 response tokens so that the
    x-transformers alignment (which skips the first response token) scores at least one."""
    batch = int(rng.integers(1, 5))
    seq_len = int(rng.integers(4, MAX_SEQ_LEN + 2))
    low = 1 if pad_id is not None else 0
    preferred = rng.integers(low, NUM_TOKENS, size=(batch, seq_len))
    unpreferred = rng.integers(low, NUM_TOKENS, size=(batch, seq_len))
    prompt_mask = np.zeros((batch, seq_len), dtype=bool)
    for row in range(batch):
        prompt_len = int(rng.integers(1, seq_len - 2))
        prompt_mask[row, :prompt_len] = True
        for seq in (preferred, unpreferred):
            end = int(rng.integers(prompt_len + 2, seq_len + 1))
            seq[row, end:] = PAD
    return torch.from_numpy(preferred), torch.from_numpy(unpreferred), torch.from_numpy(prompt_mask)


def _explicit_mask(seq, prompt_mask, rng):
    """An explicit sequence mask: non-pad tokens with a few dropped at random, redrawn until every row scores
    something (our module refuses an empty row; x-transformers would silently score it as 0)."""
    while True:
        mask = (seq != PAD) & torch.from_numpy(rng.random(tuple(seq.shape)) > 0.2)
        if scored_mask(prompt_mask, mask, "x_transformers").any(-1).all():
            return mask


@pytest.mark.parametrize("case", range(24))
def test_loss_equals_x_transformers(dpo_pair, case):
    ours, theirs = dpo_pair
    rng = np.random.default_rng(case)
    pad_id = [None, PAD, PAD][case % 3]
    use_explicit_masks = case % 3 == 2
    ours.pad_id = theirs.pad_id = pad_id

    preferred, unpreferred, prompt_mask = _random_batch(rng, pad_id)
    kwargs = dict(prompt_mask=prompt_mask)
    if use_explicit_masks:
        kwargs["preferred_seq_mask"] = _explicit_mask(preferred, prompt_mask, rng)
        kwargs["unpreferred_seq_mask"] = _explicit_mask(unpreferred, prompt_mask, rng)

    ours_loss = ours(preferred, unpreferred, **kwargs)
    theirs_loss = theirs(preferred, unpreferred, **kwargs)
    assert torch.equal(ours_loss, theirs_loss), (ours_loss.item(), theirs_loss.item())
    # The policy really differs from the reference: otherwise every loss is log 2 and the test proves little.
    assert abs(ours_loss.item() - np.log(2.0)) > 1e-4


def test_gradients_equal_x_transformers(dpo_pair):
    ours, theirs = dpo_pair
    rng = np.random.default_rng(123)
    preferred, unpreferred, prompt_mask = _random_batch(rng, PAD)
    ours.pad_id = theirs.pad_id = PAD
    ours.zero_grad(set_to_none=True)
    theirs.policy_model.zero_grad(set_to_none=True)
    ours(preferred, unpreferred, prompt_mask=prompt_mask).backward()
    theirs(preferred, unpreferred, prompt_mask=prompt_mask).backward()
    for (name, ours_param), theirs_param in zip(ours.policy_model.named_parameters(),
                                                theirs.policy_model.parameters()):
        assert torch.equal(ours_param.grad, theirs_param.grad), name


# DESIGN.md section 3: seq [11, 12, 21, 22, PAD, PAD], prompt 11 12, response 21 22.
EXAMPLE_SEQ = torch.tensor([[11, 12, 21, 22, PAD, PAD]])
EXAMPLE_PROMPT = torch.tensor([[True, True, False, False, False, False]])


def _scored_tokens(alignment):
    mask = scored_mask(EXAMPLE_PROMPT, EXAMPLE_SEQ != PAD, alignment)
    targets = EXAMPLE_SEQ[:, 1:]  # log-prob t scores token t + 1
    return targets[mask].tolist()


def test_design_example_pins_which_tokens_each_alignment_scores():
    assert _scored_tokens("next_token") == [21, 22]
    assert _scored_tokens("x_transformers") == [22, PAD]
    for alignment in ("next_token", "x_transformers"):
        oracle = oracle_scored(EXAMPLE_SEQ.numpy(), EXAMPLE_PROMPT.numpy(), alignment=alignment, pad_id=PAD)
        assert oracle.tolist() == scored_mask(EXAMPLE_PROMPT, EXAMPLE_SEQ != PAD, alignment).tolist()


def test_design_example_x_transformers_loss_reads_22_and_pad():
    """On the example, x-transformers' loss is built from the log-probs of {22, PAD}, ours (next_token) from
    {21, 22}: recompute both by hand from the token log-probs."""
    ours_xt, theirs = _pair_of_dpos(1)
    ours_xt.pad_id = theirs.pad_id = PAD
    ours_next = DPO(deepcopy(_randomised_model(1)), beta=0.1, pad_id=PAD)
    ours_next.policy_model.load_state_dict(ours_xt.policy_model.state_dict())

    unpreferred = torch.tensor([[11, 12, 31, 32, 33, PAD]])
    preferred = EXAMPLE_SEQ

    def by_hand(positions_chosen, positions_rejected):
        logps = {}
        for role, model in (("policy", ours_xt.policy_model), ("ref", ours_xt.ref_model)):
            with torch.no_grad():
                chosen = torch.log_softmax(model(preferred[:, :-1]), -1)[0, torch.arange(5), preferred[0, 1:]]
                rejected = torch.log_softmax(model(unpreferred[:, :-1]), -1)[0, torch.arange(5), unpreferred[0, 1:]]
            logps[role] = (chosen[positions_chosen].mean(), rejected[positions_rejected].mean())
        margin = (logps["policy"][0] - logps["policy"][1]) - (logps["ref"][0] - logps["ref"][1])
        return -torch.nn.functional.logsigmoid(0.1 * margin)

    # log-prob positions: x_transformers reads tokens at positions 2, 3 -> scores tokens 3, 4 = {22, PAD};
    # rejected response 31 32 33 at positions 2..4 -> x_transformers scores log-probs 2, 3, 4 = {32, 33, PAD}.
    x_expected = by_hand([2, 3], [2, 3, 4])
    next_expected = by_hand([1, 2], [1, 2, 3])
    with torch.no_grad():
        theirs_loss = theirs(preferred, unpreferred, prompt_mask=EXAMPLE_PROMPT)
        ours_xt_loss = ours_xt(preferred, unpreferred, prompt_mask=EXAMPLE_PROMPT)
        ours_next_loss = ours_next(preferred, unpreferred, prompt_mask=EXAMPLE_PROMPT)
    assert torch.equal(ours_xt_loss, theirs_loss)
    torch.testing.assert_close(ours_xt_loss, x_expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_next_loss, next_expected, rtol=0, atol=1e-6)
    assert abs(ours_next_loss.item() - ours_xt_loss.item()) > 1e-6
