"""The optional dependencies: each is declared by the extra its error names, and a feature whose
extra is missing raises that error (hidden here by setting the module to None in sys.modules,
which makes its import fail as if it were not installed)."""
import json
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import qs_attn
from qs_attn import _extras
from qs_attn._tensorboard import TensorBoardLog
from tiny_run import TINY

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _names(requirements):
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_each_optional_module_is_in_the_extra_its_error_names():
    for module, (distribution, extra) in _extras.EXTRA_OF.items():
        assert distribution.lower() in _names(EXTRAS[extra]), (module, extra)


def test_the_core_install_is_torch_and_numpy_only():
    assert _names(PYPROJECT["project"]["dependencies"]) == {"torch", "numpy"}


def test_notebooks_extra_covers_what_the_notebooks_import():
    imported = set()
    for nb in (Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                for line in "".join(cell["source"]).splitlines():
                    m = re.match(r"\s*(?:import|from)\s+([A-Za-z_]\w*)", line)
                    if m:
                        imported.add(m.group(1))
    stdlib = set(sys.stdlib_module_names)
    third_party = {m for m in imported if m not in stdlib} - {"torch", "qs_attn", "numpy"}
    declared = _names(EXTRAS["notebooks"])
    assert third_party and all(_extras.EXTRA_OF[m][0].lower() in declared for m in third_party), third_party


def test_all_is_every_extra():
    union = set().union(*(_names(v) for k, v in EXTRAS.items() if k not in ("all", "test")))
    assert _names(EXTRAS["all"]) == union


def test_plot_losses_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    log = tmp_path / "loss_log.jsonl"
    log.write_text(json.dumps({"iter": 1, "epoch": 1, "losses": {"D": 0.5, "G_GAN": 0.4, "NCE": 3.0}}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(_extras.MissingExtraError, match=r"plot_losses needs matplotlib.*pip install 'qs-attn\[plot\]'"):
        qs_attn.plot_losses(str(log), str(tmp_path / "losses.png"))
    assert not (tmp_path / "losses.png").exists()


def test_plot_losses_writes_a_png_and_leaves_the_callers_backend(tmp_path):
    """A notebook's inline backend must survive plot_losses (switching to Agg hid every later
    figure of the quickstart notebook)."""
    import matplotlib

    log = tmp_path / "loss_log.jsonl"
    log.write_text("".join(json.dumps({"iter": i, "epoch": 1, "losses": {"D": 0.5, "G_GAN": 0.4, "NCE": 3.0 - i}}) + "\n"
                           for i in (1, 2)))
    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # any backend other than the Agg that the old code forced
    try:
        out = qs_attn.plot_losses(str(log), str(tmp_path / "losses.png"))
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_samples_as_pil_without_pillow_names_the_extra(tiny_data, tmp_path, monkeypatch):
    trainer = qs_attn.Trainer(tiny_data, "pil", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, **TINY)
    grid = trainer.samples(n=2)
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(_extras.MissingExtraError, match=r"samples\(as_pil=True\) needs Pillow.*qs-attn\[plot\]"):
        trainer.samples(n=2, as_pil=True)
    monkeypatch.undo()
    image = trainer.samples(n=2, as_pil=True)
    assert image.size == (grid.shape[2], grid.shape[1])
    assert torch.equal(torch.from_numpy(np.asarray(image)).permute(2, 0, 1),
                       (grid * 255).round().to(torch.uint8))


def test_no_tensorboard_writes_no_events(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert TensorBoardLog(tmp_path).writer is None
    run = qs_attn.train(tiny_data, "no_tb", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, **TINY)
    assert run.checkpoint.is_file() and not (run.run_dir / "tensorboard").exists()

