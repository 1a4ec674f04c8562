"""A short demonstration of the qs_attn ops (the main job until the trainer lands).

Builds feature maps of the size QS-Attn sees in training (B=2 images, C=256 channels, a 64x64
map = the generator's layer-12/16 taps on 256x256 images), selects N=256 queries per image in
every mode, routes source and "translated" features, computes the PatchNCE loss, runs the
backward pass and prints what it computed.
"""
import time

import torch

import qs_attn


def main() -> None:
    torch.manual_seed(0)
    b, c, h, w, n = 2, 256, 64, 64, 256
    # Smooth random maps (a blurred noise field), scaled like early-training generator features.
    noise = torch.randn(b, c, h // 8, w // 8)
    src = torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
    src = (src / src.norm(dim=1, keepdim=True).mean() * 4.0).requires_grad_()
    tgt = (src.detach() + 0.3 * torch.randn_like(src)).requires_grad_()
    print(f"features: source and translation {tuple(src.shape)}, N = {n} queries per image\n")

    entropy = qs_attn.qs_entropy(src)
    print(f"global entropy per image: min {entropy.min():.4f}, median {entropy.median():.4f}, "
          f"max {entropy.max():.4f} nats (uniform would be ln P = {torch.log(torch.tensor(float(h * w))):.4f})")
    for mode in ("global", "local", "local_global", "cross"):
        src.grad = tgt.grad = None
        start = time.perf_counter()
        sel = qs_attn.qs_select(src, n, mode=mode)
        keys = qs_attn.qs_route(src, sel)
        queries = qs_attn.qs_cross_route(tgt, sel) if mode == "cross" else qs_attn.qs_route(tgt, sel)
        k = torch.nn.functional.normalize(keys.flatten(0, 1), dim=1)
        q = torch.nn.functional.normalize(queries.flatten(0, 1), dim=1)
        loss = qs_attn.patch_nce_loss(q, k, tau=0.07, num_images=b)
        loss.backward()
        elapsed = time.perf_counter() - start
        first = sel.indices[0, :5].tolist()
        print(f"[{mode:>12}] attn {tuple(sel.attn.shape)}, first picks image 0 (h, w): "
              f"{[(i // w, i % w) for i in first]}")
        print(f"{'':15}PatchNCE loss {loss.item():.4f}; |dL/d source| {src.grad.norm():.3e}, "
              f"|dL/d translation| {tgt.grad.norm():.3e}; fwd+bwd {elapsed * 1000:.0f} ms")
    ids = qs_attn.sample_patch_ids(h * w, n, num_images=b, generator=torch.Generator().manual_seed(0))
    print(f"\nrandom CUT patch ids (shared by the batch): {tuple(ids.shape)}, first {ids[:5].tolist()}")


if __name__ == "__main__":
    main()
