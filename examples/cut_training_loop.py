"""qs_attn inside an ordinary PyTorch training loop: your own generator and discriminator,
torch optimisers and data loading, with QS-Attn patch selection (`qs_attn.nn.PatchSampleF`) and
the PatchNCE loss (`qs_attn.nn.PatchNCELoss`) from qs_attn. Trains on the bundled emoji set.

    python examples/cut_training_loop.py --iters 500 --mode global
"""
import argparse
import random
from pathlib import Path

import torch
from torch import nn

import qs_attn
from qs_attn import _native


class Generator(nn.Module):
    """A small encoder / residual / decoder network; `features` returns the maps QS-Attn and
    PatchNCE work on (the input, the two downsampling stages, two residual stages)."""

    def __init__(self, width: int = 32, blocks: int = 4):
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c)  # noqa: E731
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, width, 7), norm(width), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), norm(2 * width), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, 2, 1), norm(4 * width), nn.ReLU())
        self.res = nn.ModuleList(
            nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(4 * width, 4 * width, 3), norm(4 * width), nn.ReLU(),
                          nn.ReflectionPad2d(1), nn.Conv2d(4 * width, 4 * width, 3), norm(4 * width))
            for _ in range(blocks))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 3, 2, 1, output_padding=1), norm(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 3, 2, 1, output_padding=1), norm(width), nn.ReLU(),
            nn.ReflectionPad2d(3), nn.Conv2d(width, 3, 7), nn.Tanh())

    def features(self, x):
        h1 = self.down1(self.stem(x))
        h2 = self.down2(h1)
        r1 = self.res[0](h2) + h2
        r2 = r1
        for block in self.res[1:]:
            r2 = block(r2) + r2
        return [x, h1, h2, r1, r2], r2

    def forward(self, x):
        return self.up(self.features(x)[1])


def discriminator(width: int = 32) -> nn.Module:
    layers, c = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
    for _ in range(2):
        layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2)]
        c *= 2
    return nn.Sequential(*layers, nn.Conv2d(c, 1, 4, 1, 1))


def load_folder(folder: Path, size: int):
    return [_native.load_image(str(p), size) for p in sorted(folder.glob("*.png"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--mode", default="global", choices=["global", "local", "local_global", "cross", "none"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--num-patches", type=int, default=64)
    p.add_argument("--out", default="runs/cut_loop")
    args = p.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    root = qs_attn.bundled_dataset()
    domain_a, domain_b = load_folder(root / "trainA", args.size), load_folder(root / "trainB", args.size)

    G, D = Generator(), discriminator()
    # The drop-in projector: QS-Attn on the last two feature maps, random patches on the others.
    F = qs_attn.nn.PatchSampleF(mode=args.mode, nc=128)
    nce = qs_attn.nn.PatchNCELoss(tau=0.07)
    with torch.no_grad():  # build F's MLPs from the feature shapes before making its optimiser
        F.create_mlp(G.features(domain_a[0])[0])
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_f = torch.optim.Adam(F.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def nce_loss(src, tgt):
        feat_k, _ = G.features(src)
        feat_q, _ = G.features(tgt)
        keys, ids, attn = F(feat_k, args.num_patches)          # source call: select / sample
        queries, _, _ = F(feat_q, args.num_patches, ids, attn)  # target call: same positions / attention
        return sum(nce(q, k, num_images=src.shape[0]) for q, k in zip(queries, keys)) / len(keys)

    for it in range(1, args.iters + 1):
        x, y = random.choice(domain_a), random.choice(domain_b)
        fake, idt = G(torch.cat([x, y])).chunk(2)
        # D step (least-squares GAN)
        opt_d.zero_grad()
        loss_d = 0.5 * (D(fake.detach()).pow(2).mean() + (D(y) - 1).pow(2).mean())
        loss_d.backward()
        opt_d.step()
        # G and F step: adversarial + PatchNCE with QS-Attn, plus the identity term
        opt_g.zero_grad()
        opt_f.zero_grad()
        for param in D.parameters():
            param.requires_grad_(False)
        loss_nce = 0.5 * (nce_loss(x, fake) + nce_loss(y, idt))
        loss_g = (D(fake) - 1).pow(2).mean() + loss_nce
        loss_g.backward()
        for param in D.parameters():
            param.requires_grad_(True)
        opt_g.step()
        opt_f.step()
        if it % 50 == 0 or it == args.iters:
            print(f"iter {it}: D {loss_d.item():.3f}  G {loss_g.item():.3f}  NCE {loss_nce.item():.3f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        tests = load_folder(root / "testA", args.size)[:6]
        grid = torch.cat([torch.cat([a[0], G(a)[0]], dim=2) for a in tests], dim=1)
    _native.save_image(grid, str(out / "translations.png"))
    print(f"wrote {out / 'translations.png'} (source | translation)")


if __name__ == "__main__":
    main()
