"""Evaluation during training (eval_freq): evaluations logged, best.safetensors tracked by FID,
best and last reported."""
import json

import pytest
import torch

import qs_attn
from qs_attn import _native
from qs_attn.evaluate import evaluate_generator
from tiny_run import TINY


def test_training_evaluates_and_keeps_the_best_checkpoint(tiny_data, tmp_path):
    result = qs_attn.train(tiny_data, "ev", "global", checkpoints_dir=str(tmp_path), max_iters=5, n_epochs=2,
                           n_epochs_decay=0, eval_freq=2, progress=False, **TINY)
    run = result.run_dir
    # iterations 2 and 4, and the last one (5) at the end
    assert [e["iter"] for e in result.evaluations] == [2, 4, 5]
    logged = [json.loads(line) for line in (run / "eval_log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in logged] == [2, 4, 5]
    assert result.best == min(result.evaluations, key=lambda e: e["fid"])
    # best.safetensors is the checkpoint of the best iteration: scoring it again gives its FID
    meta = _native.read_checkpoint(str(run / "best.safetensors"))[1]
    assert int(meta["total_iters"]) == result.best["iter"]
    G = qs_attn.load_generator(run / "best.safetensors")
    again = evaluate_generator(G, tiny_data, size=32)
    assert again["fid"] == pytest.approx(result.best["fid"], rel=1e-6)
    assert again["l1"] == pytest.approx(result.best["l1"], rel=1e-6)
    # and the last evaluation is the latest checkpoint's
    last = evaluate_generator(qs_attn.load_generator(result.checkpoint), tiny_data, size=32)
    assert last["fid"] == pytest.approx(result.evaluations[-1]["fid"], rel=1e-6)


def test_eval_freq_must_be_positive(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="eval_freq"):
        qs_attn.Trainer(tiny_data, "bad", checkpoints_dir=str(tmp_path), eval_freq=0, progress=False, **TINY)
