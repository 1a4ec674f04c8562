"""The CLI's resume, import-pth (with training options) and fid commands, end to end at tiny
sizes, each checked against the same work done another way."""
import json
import shutil

import pytest
import torch

import qs_attn
from qs_attn import _native, cli, metrics
from reference_metrics import fid_nuclear, pillow_pixels
from tiny_run import TINY

BUNDLED = qs_attn.bundled_dataset()


def _loss_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "loss_log.jsonl").read_text().splitlines() if line.strip()]


def test_cli_resume_continues_the_run_exactly(tmp_path, capsys):
    """`qs-attn resume` after 2 iterations logs the same losses for iterations 3-4 as one
    uninterrupted 4-iteration run."""
    full = qs_attn.train(name="full", checkpoints_dir=str(tmp_path), max_iters=4, progress=False, **TINY)
    half = qs_attn.train(name="half", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, **TINY)
    assert cli.main(["resume", str(half.checkpoint), "--max_iters", "4"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint:  {half.checkpoint}" in out
    assert json.loads(_native.read_checkpoint_metadata(str(half.checkpoint))["total_iters"]) == 4
    resumed_rows = {r["iter"]: r["losses"] for r in _loss_rows(half.run_dir)}
    full_rows = {r["iter"]: r["losses"] for r in _loss_rows(full.run_dir)}
    assert sorted(resumed_rows) == [1, 2, 3, 4]
    for it in (3, 4):
        assert resumed_rows[it] == full_rows[it], it


def test_cli_resume_of_a_missing_checkpoint_is_an_error(tmp_path, capsys):
    assert cli.main(["resume", str(tmp_path / "nope.safetensors")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err


def test_cli_import_pth_takes_the_training_options(tmp_path, capsys):
    """A local-mode run exported to .pth files comes back through `qs-attn import-pth` with
    its options: same weights, and the checkpoint's configuration says local."""
    options = dict(TINY, mode="local")
    run = qs_attn.train(name="local", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, **options)
    pth = tmp_path / "pth"
    qs_attn.export_pth(run.checkpoint, pth)
    out = tmp_path / "imported.safetensors"
    flags = [f for k, v in options.items() for f in (f"--{k}", json.dumps(v))]
    flags += ["--dataroot", str(BUNDLED), "--checkpoints_dir", str(tmp_path), "--name", "imported"]
    args = ["import-pth", str(out)] + [f for n in "GDF" for f in (f"--{n}", str(pth / f"latest_net_{n}.pth"))]
    assert cli.main(args + flags) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    config = json.loads(_native.read_checkpoint_metadata(str(out))["config"])
    for k, v in options.items():
        assert config[k] == v, k
    original, imported = qs_attn.checkpoint_state_dicts(run.checkpoint), qs_attn.checkpoint_state_dicts(out)
    for net in "GDF":
        assert original[net].keys() == imported[net].keys()
        for k in original[net]:
            assert torch.equal(original[net][k], imported[net][k]), (net, k)
    # the imported checkpoint trains on, in local mode
    assert cli.main(["resume", str(out), "--max_iters", "1"]) == 0
    assert _loss_rows(tmp_path / "imported")[-1]["iter"] == 1


def test_cli_import_pth_with_the_wrong_width_is_a_clear_error(tmp_path, capsys):
    run = qs_attn.train(name="w8", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, **TINY)
    qs_attn.export_pth(run.checkpoint, tmp_path / "pth")
    code = cli.main(["import-pth", str(tmp_path / "x.safetensors"), "--G", str(tmp_path / "pth" / "latest_net_G.pth"),
                     "--ngf", "16"])
    assert code == 2
    assert "qs-attn: error:" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def _folder(root, split, count):
    folder = root / split
    folder.mkdir(parents=True)
    for f in sorted((BUNDLED / split).glob("*.png"))[:count]:
        shutil.copy(f, folder / f.name)
    return folder


def test_fid_between_two_folders_python_and_cli(tmp_path, capsys):
    a, b = _folder(tmp_path, "testA", 6), _folder(tmp_path, "testB", 5)
    scores = qs_attn.fid.folder_distance(a, b, kid_subset_size=3)
    extractor = metrics.inception_features()
    feats_a = extractor(torch.cat([pillow_pixels(p) for p in sorted(a.iterdir())]))
    feats_b = extractor(torch.cat([pillow_pixels(p) for p in sorted(b.iterdir())]))
    assert scores["fid"] == pytest.approx(fid_nuclear(feats_a, feats_b), rel=1e-6)
    kid = metrics.kernel_inception_distance(feats_a, feats_b, 100, 3, seed=0)
    assert (scores["kid_mean"], scores["kid_std"]) == pytest.approx(kid, rel=1e-6, abs=1e-9)
    assert (scores["num_a"], scores["num_b"]) == (6, 5)

    assert cli.main(["fid", str(a), str(b), "--kid-subset-size", "3", "--json", str(tmp_path / "s.json")]) == 0
    assert f"FID {scores['fid']:.4f}" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["fid"] == pytest.approx(scores["fid"], rel=1e-12)
    # a folder against itself
    assert abs(qs_attn.fid.folder_distance(a, a)["fid"]) < 1e-6


def test_fid_bad_input(tmp_path, capsys):
    a = _folder(tmp_path, "testA", 1)
    assert cli.main(["fid", str(a), str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 2"):
        qs_attn.fid.folder_distance(a, a)
