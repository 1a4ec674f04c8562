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


def _logged_iters(run):
    return [json.loads(line)["iter"] for line in (run / "eval_log.jsonl").read_text().splitlines()]


def test_a_fresh_run_starts_a_new_evaluation_history(tiny_data, tmp_path):
    opts = dict(checkpoints_dir=str(tmp_path), n_epochs=2, n_epochs_decay=0, eval_freq=2, progress=False, **TINY)
    first = qs_attn.train(tiny_data, "ev", "global", max_iters=4, **opts)
    # refused without overwrite: the earlier run's evaluation log is one of the outputs it would replace
    with pytest.raises(ValueError, match="eval_log.jsonl"):
        qs_attn.train(tiny_data, "ev", "global", max_iters=2, **opts)
    assert _logged_iters(first.run_dir) == [2, 4]
    again = qs_attn.train(tiny_data, "ev", "global", max_iters=2, overwrite=True, **opts)
    assert [e["iter"] for e in again.evaluations] == [2] and _logged_iters(again.run_dir) == [2]
    assert again.best["iter"] == 2 and again.best["fid"] == again.evaluations[0]["fid"]


def test_resuming_an_earlier_checkpoint_discards_the_later_evaluations(tiny_data, tmp_path):
    trainer = qs_attn.Trainer(tiny_data, "ev", "global", checkpoints_dir=str(tmp_path), n_epochs=3, n_epochs_decay=0,
                              eval_freq=2, progress=False, **TINY)
    trainer.fit(2)
    at2 = trainer.save(tmp_path / "at2.safetensors")
    first = trainer.fit(4)  # evaluations at 2, 4 and 6
    run = first.run_dir
    assert _logged_iters(run) == [2, 4, 6]
    # make the discarded continuation's evaluation at 6 the one best.safetensors holds, whatever the FIDs
    rows = [json.loads(line) for line in (run / "eval_log.jsonl").read_text().splitlines()]
    rows[2]["fid"], rows[2]["best"] = -1.0, True
    (run / "eval_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer.save(run / "best.safetensors")

    resumed = qs_attn.resume(at2, max_iters=5, eval_freq=2)
    # one row per iteration: 2 from before, 4 retrained, and the end (5); 6 is gone
    assert [e["iter"] for e in resumed.evaluations] == [2, 4, 5] == _logged_iters(run)
    assert resumed.evaluations[0] == rows[0]
    # the discarded best is kept aside, and best.safetensors is again the reported best's checkpoint
    assert _native.read_checkpoint(str(run / "best_discarded_iter6.safetensors"))[1]["total_iters"] == "6"
    assert int(_native.read_checkpoint(str(run / "best.safetensors"))[1]["total_iters"]) == resumed.best["iter"]
    assert resumed.best["iter"] in (4, 5)  # "best" restarts at the resume point
    # resuming the latest checkpoint keeps the whole history, best included
    onward = qs_attn.resume(resumed.checkpoint, max_iters=6, eval_freq=2)
    assert [e["iter"] for e in onward.evaluations] == [2, 4, 5, 6] == _logged_iters(run)
    assert onward.evaluations[:3] == resumed.evaluations
    assert onward.best == min(onward.evaluations[1:], key=lambda e: e["fid"])
    assert int(_native.read_checkpoint(str(run / "best.safetensors"))[1]["total_iters"]) == onward.best["iter"]
