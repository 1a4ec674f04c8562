"""The ops inside the PyTorch ecosystem: `torch.compile(fullgraph=True)` (CPU inductor) of a
module using them gives the eager values and gradients with no graph break; the registered
custom ops pass `torch.library.opcheck`; under autocast (CPU bf16; CUDA fp16 / bf16 where a
GPU is present) the attention, entropy and NCE run in float32."""

import pytest
import torch

import qs_attn
from qs_attn import _library


class QSContrast(torch.nn.Module):
    """A conv encoder, QS-Attn on its features and PatchNCE: the contrastive term of QS-Attn."""

    def __init__(self, mode, layout="geometric"):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.mode, self.layout = mode, layout

    def forward(self, x, y):
        fs, ft = self.conv(x), self.conv(y)
        sel = qs_attn.qs_select(fs, 16, mode=self.mode, window=3, local_layout=self.layout)
        k = qs_attn.qs_route(fs, sel)
        q = qs_attn.qs_cross_route(ft, sel) if self.mode == "cross" else qs_attn.qs_route(ft, sel)
        k = torch.nn.functional.normalize(k.flatten(0, 1), dim=1)
        q = torch.nn.functional.normalize(q.flatten(0, 1), dim=1)
        return qs_attn.patch_nce_loss(q, k, num_images=x.shape[0])


@pytest.mark.parametrize("mode,layout", [("global", "geometric"), ("cross", "geometric"), ("local", "reference"),
                                         ("local_global", "reference")])
def test_compile_fullgraph_matches_eager(mode, layout):
    torch.manual_seed(0)
    model = QSContrast(mode, layout)
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    eager = model(x, y)
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="inductor")  # raises on a graph break
    out = compiled(x, y)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_custom_ops_pass_opcheck():
    torch.manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(8, 6, dtype=torch.float64), dim=1).requires_grad_()
    k = torch.nn.functional.normalize(torch.randn(8, 6, dtype=torch.float64), dim=1).requires_grad_()
    torch.library.opcheck(_library.patch_nce_loss, (q, k, 0.07, 2, "none", False))
    torch.library.opcheck(_library.patch_nce_loss, (q, k, 0.07, 1, "mean", True))
    src = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    tgt = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    indices = _library.select_indices(src.detach(), 6, "global", 7, "geometric")
    torch.library.opcheck(_library.select_indices, (src.detach(), 6, "local", 3, "reference"))
    for mode in ("global", "cross"):
        torch.library.opcheck(_library.route, (src, indices, tgt, mode, 7, "geometric"))
    local_indices = _library.select_indices(src.detach(), 6, "local", 3, "reference")
    torch.library.opcheck(_library.route, (src, local_indices, tgt, "local", 3, "reference"))


AUTOCASTS = [("cpu", torch.bfloat16), ("cuda", torch.float16), ("cuda", torch.bfloat16)]


@pytest.mark.parametrize("device, dtype", AUTOCASTS, ids=lambda v: str(v).replace("torch.", ""))
def test_autocast_keeps_attention_and_nce_in_float32(device, dtype):
    """CPU bf16 here; CUDA fp16 / bf16 where a GPU is present (skipped in CI)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(2)
    proj = torch.nn.Linear(16, 16).to(device)
    x = torch.randn(2, 64, 16, device=device)
    with torch.autocast(device, dtype=dtype):
        feats = proj(x)  # low precision under autocast
        assert feats.dtype == dtype
        fmap = feats.transpose(1, 2).reshape(2, 16, 8, 8)
        assert qs_attn.qs_entropy(fmap).dtype == torch.float32
        sel = qs_attn.qs_select(fmap, 16)
        assert sel.attn.dtype == torch.float32
        routed = qs_attn.qs_route(fmap, sel)
        assert routed.dtype == dtype  # values follow the features
        rows = torch.nn.functional.normalize(routed.flatten(0, 1).float(), dim=1)
        loss = qs_attn.patch_nce_loss(rows.to(dtype), rows.to(dtype).flip(0), num_images=2)
        assert loss.dtype == torch.float32
    loss.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()
    # the float32 computation on the same low-precision features selects the same queries
    assert torch.equal(sel.indices, qs_attn.qs_select(fmap.detach().float(), 16).indices)
