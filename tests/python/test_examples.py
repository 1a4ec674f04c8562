"""The examples run end to end (at tiny sizes) on the bundled data."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("mode", ["global", "local"])
def test_cut_training_loop_example(tmp_path, mode):
    done = subprocess.run([sys.executable, str(EXAMPLES / "cut_training_loop.py"), "--iters", "4", "--mode", mode,
                           "--size", "32", "--num-patches", "16", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    losses = [float(v) for v in re.findall(r"NCE (\d+\.\d+)", done.stdout)]
    assert losses and all(0.0 < v < 10.0 for v in losses)
    assert (tmp_path / "translations.png").stat().st_size > 0


def test_ops_demo_example():
    done = subprocess.run([sys.executable, str(EXAMPLES / "demo_ops.py")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("PatchNCE loss") == 4  # one line per mode


def test_main_job_example_smoke(tmp_path):
    """The main job's script end to end at 2 iterations (scores left out: --no-eval)."""
    done = subprocess.run([sys.executable, str(EXAMPLES / "train_emoji_mono.py"), "--epochs-scale", "0.0001", "--no-eval",
                           "--checkpoints-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "trained 2 iterations" in done.stdout
    run = tmp_path / "emoji_mono_qs_global"
    assert (run / "test_translations.png").stat().st_size > 0
    from qs_attn import _native

    tensors, _ = _native.read_checkpoint(str(run / "latest.safetensors"))
    assert any(k.startswith("G.") for k in tensors)
