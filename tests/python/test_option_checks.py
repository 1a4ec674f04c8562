"""Options are checked when the config is read, each error naming its option, and no Rust
panic reaches Python as pyo3's PanicException (a BaseException that ``except Exception``
misses): every defect here raised the wrong thing, or nothing, before."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import qs_attn
from qs_attn import _native

TINY = dict(progress=False, crop_size=32, load_size=32, num_patches=16, ngf=4, ndf=4, n_blocks=1, netF_nc=8)


def _trainer(tmp_path, **options):
    return qs_attn.Trainer(name="opts", checkpoints_dir=str(tmp_path), **{**TINY, **options})


@pytest.mark.parametrize("option", ["lr", "beta1", "lambda_NCE", "nce_T", "init_gain"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_number_names_the_option(tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"\b{option}\b.*finite"):
        _trainer(tmp_path, **{option: value})


def test_integer_option_given_a_float_names_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"num_patches = 3\.7"):
        _trainer(tmp_path, num_patches=3.7)


@pytest.mark.parametrize("option,value", [("beta1", 2.0), ("beta1", 1.0), ("beta2", -1.0), ("beta2", 1.5)])
def test_betas_outside_zero_one_are_refused(tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"{option} must be in \[0, 1\), got"):
        _trainer(tmp_path, **{option: value})


@pytest.mark.parametrize("option,value", [("ngf", 0), ("ndf", 0), ("netF_nc", 0), ("ngf", -8)])
def test_non_positive_network_sizes_name_the_option(tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"{option} must be >= 1, got {value}"):
        _trainer(tmp_path, **{option: value})


@pytest.mark.parametrize("make", [lambda: qs_attn.Generator(ngf=0), lambda: qs_attn.Generator(ngf=-8),
                                  lambda: qs_attn.Discriminator(ndf=0),
                                  lambda: qs_attn.nn.PatchSampleF(nc=0)([torch.zeros(1, 3, 4, 4)], 2)])
def test_networks_of_no_width_are_a_value_error(make):
    with pytest.raises(ValueError, match=r"(ngf|ndf|nc) must be >= 1"):
        make()


@pytest.mark.parametrize("option", ["mode", "gan_mode", "init_type", "local_layout", "precision", "direction",
                                    "on_nonfinite"])
def test_a_bad_name_lists_the_allowed_values(tmp_path, option):
    with pytest.raises(ValueError) as e:
        _trainer(tmp_path, **{option: "bogus"})
    message = str(e.value)
    assert option in message and "bogus" in message
    assert all(f"'{name}'" in message for name in _native.OPTION_CHOICES[option]), message


def test_the_choice_lists_are_the_ones_the_parsers_accept():
    # the training mode is a QS-Attn mode of the ops or plain CUT
    assert _native.OPTION_CHOICES["mode"] == _native.OPTION_CHOICES["qs_mode"] + ["none"]
    feat = torch.randn(1, 4, 4, 4)
    for mode in _native.OPTION_CHOICES["qs_mode"]:
        for layout in _native.OPTION_CHOICES["local_layout"]:
            qs_attn.qs_select(feat, 2, mode=mode, window=3, local_layout=layout)
    for reduction in _native.OPTION_CHOICES["reduction"]:
        qs_attn.patch_nce_loss(torch.randn(4, 3), torch.randn(4, 3), reduction=reduction)


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="needs a machine without an 8th GPU")
def test_an_unavailable_cuda_device_is_named_as_written(tmp_path):
    with pytest.raises(ValueError, match=r"cuda:7"):
        _trainer(tmp_path, device="cuda:7")


def test_a_meta_tensor_is_not_called_mps():
    q = torch.empty(8, 5, device="meta")
    with pytest.raises(ValueError) as e:
        qs_attn.patch_nce_loss(q, q, num_images=1)
    assert "meta" in str(e.value) and "Mps" not in str(e.value)


def test_a_rust_panic_is_an_ordinary_exception():
    """A panic inside an entry point (a patch sampler asked for 2**62 positions) raises an
    Exception subclass; run in a subprocess so that any crash fails this test, not the suite."""
    code = textwrap.dedent("""
        import qs_attn
        try:
            qs_attn.PatchSampler(0).sample(2**62, 4, 1, False)
        except Exception as e:
            print("raised", type(e).__name__)
        except BaseException as e:
            print("escaped", type(e).__name__)
        else:
            print("returned")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:1] in (["raised"], ["returned"]), out.stdout + out.stderr[-2000:]
