"""Held-out evaluation in the run: eval/* metrics equal `dpo_loss` on all held-out pairs at once (an independent
path), with a precomputed reference and with another layout; eval steps, plot and summary; the seeded split; the
reference cache covering eval batches; kill-and-resume stays exact with evaluation on."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from dpo_jax import dpo_loss, sharding
from dpo_jax.data import PreferenceExample, collate_pairs, read_preference_jsonl, split_examples
from dpo_jax.models.x_transformers import Transformer, TransformerConfig, load_safetensors
from dpo_jax.tokenizer import ByteTokenizer
from dpo_jax.train import RunConfig, TrainConfig, init_train_state, load_run_config, run as train
from dpo_jax.train.evaluation import EVAL_METRICS, Evaluator
from dpo_jax.train.outputs import read_metrics
from dpo_jax.train.reference import ReferenceCache
from tests.test_checkpointing import write_data

TOK = ByteTokenizer()
TINY = dict(dim=32, depth=1, heads=2, max_seq_len=12, batch_size=4, progress=False, checkpoint_every=2)


def run_config(tmp_path, out, **changes):
    options = dict(TINY, steps=6, train=TrainConfig(learning_rate=1e-3), data=write_data(tmp_path / "data.jsonl"))
    options.update(changes)
    return RunConfig(out_dir=str(tmp_path / out), **options)


def initial_model(config: RunConfig):
    """The run's starting weights, rebuilt from its config and seed (the frozen reference of a --data run)."""
    model_config = TransformerConfig(num_tokens=TOK.vocab_size, max_seq_len=config.max_seq_len, dim=config.dim,
                                     depth=config.depth, heads=config.heads,
                                     attn_dim_head=config.dim // config.heads)
    return Transformer(model_config, rngs=nnx.Rngs(config.seed))


@pytest.mark.parametrize("layout, precompute_ref", [("padded", True), ("packed", False)])
def test_eval_metrics_equal_dpo_loss_on_all_held_out_pairs(tmp_path, layout, precompute_ref):
    eval_path = write_data(tmp_path / "eval.jsonl", count=5, seed=1)
    config = run_config(tmp_path, "run", eval_data=eval_path, eval_batch_size=2, eval_every=4, layout=layout,
                        train=TrainConfig(learning_rate=1e-3, precompute_ref=precompute_ref))
    summary = train(config)
    assert summary["eval_pairs"] == 5 and summary["data"]["eval_pairs"] == 5
    # independently: the final policy and the initial reference, all five pairs in one padded batch, dpo_loss
    policy = load_safetensors(tmp_path / "run" / "policy.safetensors")
    examples = read_preference_jsonl(eval_path, TOK)
    batch = collate_pairs(examples, max_len=config.max_seq_len, pad_id=TOK.pad_id).as_dict()
    _, metrics = dpo_loss(policy, initial_model(config), **batch, beta=config.train.beta,
                          reduction=config.train.reduction)
    for name in EVAL_METRICS:
        np.testing.assert_allclose(summary[f"eval/{name}"], float(metrics[name]), rtol=1e-5, atol=1e-6, err_msg=name)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if "eval/loss" in r] == [4, 6]   # every 4 steps, and always the last
    assert records[-1]["eval/loss"] == summary["eval/loss"]
    assert (tmp_path / "run" / "training.png").stat().st_size > 0


def test_kill_and_resume_with_evaluation_reproduces_the_uninterrupted_run(tmp_path):
    options = dict(eval_split=0.25, eval_every=2)
    full = train(run_config(tmp_path, "full", **options))
    assert train(run_config(tmp_path, "resumed", stop_after_step=5, **options)) == {"stopped_at_step": 5}
    resumed = train(load_run_config(tmp_path / "resumed"))
    untimed = [[{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(tmp_path / name)]
               for name in ("resumed", "full")]
    assert untimed[0] == untimed[1]   # every logged float, eval records included (tokens/s is a timing)
    assert [r["step"] for r in read_metrics(tmp_path / "full") if "eval/loss" in r] == [2, 4, 6]
    assert resumed["eval/loss"] == full["eval/loss"] and full["eval_pairs"] == 6   # ceil(0.25 * 24)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["data"]["train_pairs"] == 18


def test_split_is_seeded_disjoint_and_keeps_the_order():
    pool = [PreferenceExample([i], [1], [2], line=i) for i in range(40)]
    train_part, held_out = split_examples(pool, 0.07, seed=3)
    assert len(held_out) == 3 and len(train_part) == 37        # ceil(0.07 * 40) = ceil(2.8)
    assert sorted(ex.line for ex in train_part + held_out) == list(range(40))
    assert [ex.line for ex in held_out] == sorted(ex.line for ex in held_out)
    assert split_examples(pool, 0.07, seed=3) == (train_part, held_out)
    assert split_examples(pool, 0.07, seed=4)[1] != held_out
    hundred = [PreferenceExample([i], [1], [2], line=i) for i in range(100)]
    assert len(split_examples(hundred, 0.07, seed=0)[1]) == 7   # 0.07 * 100 is 7.000000000000001 in floats
    with pytest.raises(ValueError, match="fraction in \\(0, 1\\)"):
        split_examples(pool, 1.0, seed=0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        split_examples(pool[:1], 0.5, seed=0)


def test_reference_cache_covers_eval_batches_and_gives_the_models_numbers(tmp_path):
    config = run_config(tmp_path, "unused")
    model = initial_model(config)
    examples = read_preference_jsonl(write_data(tmp_path / "eval.jsonl", count=5, seed=2), TOK)
    results = {}
    for precompute in (False, True):
        train_config = TrainConfig(precompute_ref=precompute, total_steps=1)
        graphdef, state = init_train_state(model, model, train_config)
        state = state.replace(params=jax_perturbed(state.params))   # the policy differs from the reference
        mesh = sharding.make_mesh(None)
        evaluator = Evaluator(graphdef, train_config, examples, batch_size=2, max_len=config.max_seq_len,
                              pad_id=TOK.pad_id, mesh=mesh)
        cache = None
        if precompute:
            cache = ReferenceCache(graphdef, nnx.split(model, nnx.Param)[1], train_config)
            cache.precompute(evaluator.batch_arrays())
            misses = cache.misses
        results[precompute] = evaluator.evaluate(state, cache)
        if precompute:
            assert cache.misses == misses == evaluator.num_batches == 3   # every eval batch was precomputed
    for name, value in results[False].items():
        np.testing.assert_allclose(results[True][name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    assert results[False]["eval/rewards/margins"] != 0.0


def jax_perturbed(params):
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(0)
    return jax.tree.unflatten(treedef, [leaf + 0.05 * rng.standard_normal(leaf.shape).astype(leaf.dtype)
                                        for leaf in leaves])


@pytest.mark.parametrize("changes, message", [
    (dict(eval_every=2), "eval_every needs eval data or an eval split"),
    (dict(eval_split=0.1, eval_data="x.jsonl"), "not both"),
    (dict(eval_split=1.5), "fraction in \\(0, 1\\)"),
    (dict(data=None, eval_split=0.1), "evaluation needs --data"),
])
def test_eval_options_that_cannot_work_fail_first(tmp_path, changes, message):
    config = run_config(tmp_path, "bad", **changes)
    with pytest.raises(ValueError, match=message):
        train(config)
    assert not (tmp_path / "bad").exists()
