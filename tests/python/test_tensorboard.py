"""TensorBoard events of a training run, read back with TensorBoard's own reader: the logged
losses as scalars (equal to the run's loss_log.jsonl) and the sample grids as images (equal to
the PNGs the run wrote). Written whether or not the progress display is on."""
import io
import json

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import qs_attn
from tiny_run import TINY


def test_events_hold_the_logged_losses_and_the_sample_grids(tiny_data, tmp_path):
    run = qs_attn.train(tiny_data, "tb", checkpoints_dir=str(tmp_path), max_iters=5, display_freq=2,
                        progress=False, **TINY)
    events = event_accumulator.EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    rows = [json.loads(line) for line in run.log.read_text().splitlines() if line.strip()]
    terms = sorted(rows[0]["losses"])
    assert {"D", "NCE"} <= set(terms)
    assert sorted(events.Tags()["scalars"]) == sorted(f"loss/{t}" for t in terms)
    for term in terms:
        logged = [(r["iter"], r["losses"][term]) for r in rows]
        stored = [(e.step, e.value) for e in events.Scalars(f"loss/{term}")]
        assert [s for s, _ in stored] == [s for s, _ in logged] == [1, 2, 3, 4, 5]
        assert [v for _, v in stored] == pytest.approx([v for _, v in logged], rel=1e-6)
    # grids at iterations 2 and 4 (display_freq) and the final one at 5
    written = sorted(run.run_dir.glob("samples/iter_*.png"))
    images = events.Images("samples")
    assert [e.step for e in images] == [int(p.stem.split("_")[1]) for p in written] == [2, 4, 5]
    for e, path in zip(images, written):
        stored = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
        on_disk = np.asarray(Image.open(path).convert("RGB"))
        assert (e.width, e.height) == (on_disk.shape[1], on_disk.shape[0])
        assert np.array_equal(stored, on_disk)


def test_resumed_run_appends_only_its_own_grids(tiny_data, tmp_path):
    half = qs_attn.train(tiny_data, "tb2", checkpoints_dir=str(tmp_path), max_iters=2, display_freq=2,
                         progress=False, **TINY)
    qs_attn.resume(half.checkpoint, max_iters=4, progress=False)
    events = event_accumulator.EventAccumulator(str(half.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("samples")] == [2, 4]
    assert [e.step for e in events.Scalars("loss/NCE")] == [1, 2, 3, 4]
