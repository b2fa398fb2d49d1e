"""`python -m dpo_jax.hf_demo --quick`: a Llama-family model trained on the sorting task, saved as a Hugging Face
directory, DPO-trained through `dpo-jax train --model`, read back, and preferring the ascending sort more often."""

import json
import os

import pytest

from dpo_jax.hf_demo import main


@pytest.mark.slow
def test_quick_recipe_end_to_end(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--quick"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["valid_rate_before"] >= 0.9, summary          # the SFT model sorts
    assert 0.25 <= summary["preferred_rate_before"] <= 0.75, summary  # in both orders
    assert summary["preferred_rate_after"] >= summary["preferred_rate_before"] + 0.2, summary
    assert os.path.isfile(tmp_path / "run" / "hf_policy" / "tokenizer.json")
    assert "dpo-jax train --model" in capsys.readouterr().out
