"""Small shared helpers for the qs_attn tests (no qs_attn import here)."""

import torch

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def close(actual, expected, dtype=None, msg=""):
    dtype = dtype or expected.dtype
    torch.testing.assert_close(actual, expected, check_dtype=True,
                               msg=(lambda m: f"{msg}: {m}") if msg else None, **TOL[dtype])


def no_grad_reached(g):
    """True when autograd reports no gradient (None) or an all-zero gradient."""
    return g is None or bool((g == 0).all())


def weights_like(t, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)


def leaf(t):
    return t.detach().clone().requires_grad_(True)
