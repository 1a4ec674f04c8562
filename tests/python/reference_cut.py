"""Plain-PyTorch oracle for the CUT / QS-Attn networks and ONE training step, transcribed
from docs/algorithm.md (its §3, §3.1, §4, §5, §6, §7, §9, §10, §11, §14; bare section and
quirk numbers below refer to it).

This module is a *test oracle* for the ``qs_attn`` package: it must not import ``qs_attn``.
The QS-Attn ops, PatchNCE and the patch sampler come from ``reference.py`` (imported, not
duplicated).

Module and attribute names are chosen so that ``state_dict()`` keys are those of the
authors' checkpoints (§3 / §4 / §7 and Q22):

* G: ``model.{1,4,8,22,26,30}.weight|bias``, ``model.{7,11,21,25}.filt``,
  ``model.{12..20}.conv_block.{1,5}.weight|bias``;
* D: ``model.{0,3,7,11,14}.weight|bias``, ``model.{2,6,10}.filt``;
* F (``reference.PatchSampleF``): ``mlp_{s}.{0,2}.weight|bias``.

One optimisation step (§11.5, flip equivariance off) is available as

* ``compute_D_loss`` / ``compute_G_loss`` (the reference's loss functions, random ids
  injectable), and
* ``one_step`` (forward, D loss + backward, [Adam on D], G/F loss with D frozen + backward,
  [Adam on G, then on F]). Without optimisers the gradients are left in ``.grad`` for
  comparison; with optimisers the reference order is followed, so the G loss sees the
  just-updated D.

Deviation from the authors' code, on purpose (Q3): PatchNCE splits the rows into images
with the ACTUAL batch of the source images, not with the configured ``batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as Fn

import reference as ref

Tensor = torch.Tensor

# --------------------------------------------------------------------------- resampling (§3)


class Downsample(nn.Module):
    """Blur-pool, stride 2: reflection pad 1, depthwise conv with ``b bᵀ/16``, b = [1,2,1].

    Buffer ``filt`` (c×1×3×3), not trainable, not touched by ``init_weights``.
    Output side ⌊(n−1)/2⌋ + 1.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        b = torch.tensor([1.0, 2.0, 1.0])
        k = b[:, None] * b[None, :]
        k = k / k.sum()
        self.register_buffer("filt", k[None, None, :, :].repeat(channels, 1, 1, 1))
        self.pad = nn.ReflectionPad2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return Fn.conv2d(self.pad(x), self.filt, stride=2, groups=x.shape[1])


class Upsample(nn.Module):
    """Stride-2 upsampling: replication pad 1, depthwise transposed conv (stride 2,
    padding 2) with ``4·(a aᵀ)/64``, a = [1,3,3,1], then drop the first and the last row and
    column (side 2n+2 → 2n). Buffer ``filt`` (c×1×4×4)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        a = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = a[:, None] * a[None, :]
        k = k / k.sum() * 4.0
        self.register_buffer("filt", k[None, None, :, :].repeat(channels, 1, 1, 1))
        self.pad = nn.ReplicationPad2d(1)

    def forward(self, x: Tensor) -> Tensor:
        y = Fn.conv_transpose2d(self.pad(x), self.filt, stride=2, padding=2, groups=x.shape[1])
        return y[:, :, 1:-1, 1:-1]


def _norm(c: int) -> nn.Module:
    # §3: InstanceNorm2d, affine = false, no running stats, eps 1e-5.
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


# --------------------------------------------------------------------------- generator (§3)


class ResnetBlock(nn.Module):
    """out = x + body(x); body = reflect-pad 1, conv k3, IN, ReLU, reflect-pad 1, conv k3, IN
    (dropout off), so the convs are ``conv_block.1`` and ``conv_block.5``."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            _norm(dim),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            _norm(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ResNet-9-blocks generator with anti-aliased resampling, ONE flat ``self.model`` whose
    indices are those of §3's table (0 reflection pad 3 … 31 tanh for n_blocks = 9)."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        self.input_nc = input_nc
        self.output_nc = output_nc
        self.ngf = ngf
        layers: List[nn.Module] = [
            nn.ReflectionPad2d(3),                                   # 0
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=True),  # 1
            _norm(ngf),                                              # 2
            nn.ReLU(),                                               # 3
        ]
        n_down = 2
        for i in range(n_down):                                      # 4..7, 8..11
            mult = 2 ** i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=1, padding=1, bias=True),
                _norm(ngf * mult * 2),
                nn.ReLU(),
                Downsample(ngf * mult * 2),
            ]
        mult = 2 ** n_down
        for _ in range(n_blocks):                                    # 12..20
            layers += [ResnetBlock(ngf * mult)]
        for i in range(n_down):                                      # 21..24, 25..28
            mult = 2 ** (n_down - i)
            layers += [
                Upsample(ngf * mult),
                nn.Conv2d(ngf * mult, ngf * mult // 2, kernel_size=3, stride=1, padding=1, bias=True),
                _norm(ngf * mult // 2),
                nn.ReLU(),
            ]
        layers += [
            nn.ReflectionPad2d(3),                                   # 29
            nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0, bias=True),  # 30
            nn.Tanh(),                                               # 31
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor, layers: Optional[Sequence[int]] = None, encode_only: bool = False):
        """``encode_only``: the outputs of ``layers`` (model indices) in list order, running the
        sequence only up to the largest requested index. Without ``layers``: the translation.
        With ``layers`` but not ``encode_only``: ``(translation, taps)`` as in CUT."""
        if not layers:
            return self.model(x)
        wanted = [int(i) for i in layers]
        last = max(wanted)
        taps: Dict[int, Tensor] = {}
        feat = x
        for idx, layer in enumerate(self.model):
            feat = layer(feat)
            if idx in wanted:
                taps[idx] = feat
            if encode_only and idx == last:
                return [taps[i] for i in wanted]
        return feat, [taps[i] for i in wanted]


# --------------------------------------------------------------------------- discriminator (§4)


class NLayerDiscriminator(nn.Module):
    """PatchGAN, anti-aliased: conv k4 s1 p1 (+ LeakyReLU 0.2, Down) then n_layers−1 stages
    conv k4 s1 p1, IN, LeakyReLU, Down; then conv, IN, LeakyReLU; final conv → 1 channel,
    no sigmoid. All convs carry a bias (instance norm)."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        kw, padw = 4, 1
        seq: List[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=1, padding=padw),
            nn.LeakyReLU(0.2),
            Downsample(ndf),
        ]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_prev, nf_mult = nf_mult, min(2 ** n, 8)
            seq += [
                nn.Conv2d(ndf * nf_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=True),
                _norm(ndf * nf_mult),
                nn.LeakyReLU(0.2),
                Downsample(ndf * nf_mult),
            ]
        nf_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        seq += [
            nn.Conv2d(ndf * nf_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=True),
            _norm(ndf * nf_mult),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*seq)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# --------------------------------------------------------------------------- init (§3.1)


def init_weights(net: nn.Module, init_type: str = "xavier", gain: float = 0.02) -> nn.Module:
    """CUT's init: every module whose class name contains ``Conv`` or ``Linear`` and has a
    weight gets the chosen init, its bias 0; BatchNorm2d weight N(1, gain), bias 0.
    Buffers (Down/Up kernels) are untouched."""

    def init_func(m: nn.Module) -> None:
        cls = m.__class__.__name__
        w = getattr(m, "weight", None)
        if w is not None and ("Conv" in cls or "Linear" in cls):
            with torch.no_grad():
                if init_type == "normal":
                    nn.init.normal_(w, 0.0, gain)
                elif init_type == "xavier":
                    nn.init.xavier_normal_(w, gain=gain)
                elif init_type == "kaiming":
                    nn.init.kaiming_normal_(w, a=0, mode="fan_in")
                elif init_type == "orthogonal":
                    nn.init.orthogonal_(w, gain=gain)
                else:
                    raise ValueError(init_type)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        elif "BatchNorm2d" in cls and w is not None:
            with torch.no_grad():
                nn.init.normal_(w, 1.0, gain)
                nn.init.zeros_(m.bias)

    net.apply(init_func)
    return net


# --------------------------------------------------------------------------- GAN loss (§5)


class GANLoss:
    """Targets 1.0 (real) / 0.0 (fake). Returns what the model then ``.mean()``s:
    a scalar for lsgan / vanilla / wgangp, a length-B vector for nonsaturating."""

    MODES = ("lsgan", "vanilla", "nonsaturating", "wgangp")

    def __init__(self, gan_mode: str = "lsgan"):
        if gan_mode not in self.MODES:
            raise ValueError(gan_mode)
        self.gan_mode = gan_mode

    def __call__(self, pred: Tensor, target_is_real: bool) -> Tensor:
        m = self.gan_mode
        if m in ("lsgan", "vanilla"):
            target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
            if m == "lsgan":
                return Fn.mse_loss(pred, target)
            return Fn.binary_cross_entropy_with_logits(pred, target)
        if m == "wgangp":  # Q14: no gradient penalty
            return -pred.mean() if target_is_real else pred.mean()
        bs = pred.shape[0]
        z = -pred if target_is_real else pred
        return Fn.softplus(z).reshape(bs, -1).mean(dim=1)


# --------------------------------------------------------------------------- LR schedule (§11.3)


def lr_lambda(epoch_index: int, epoch_count: int = 1, n_epochs: int = 200,
              n_epochs_decay: int = 200) -> float:
    """Linear policy multiplier; ``epoch_index`` = number of completed scheduler steps
    (0 during the first epoch)."""
    return 1.0 - max(0, epoch_index + epoch_count - n_epochs) / float(n_epochs_decay + 1)


def lr_multiplier_for_epoch(epoch: int, epoch_count: int = 1, n_epochs: int = 200,
                            n_epochs_decay: int = 200) -> float:
    """Multiplier in effect during (1-based) ``epoch`` of a run started at ``epoch_count``."""
    return lr_lambda(epoch - epoch_count, epoch_count, n_epochs, n_epochs_decay)


# --------------------------------------------------------------------------- options


@dataclass
class CUTOptions:
    """The options one optimisation step uses (defaults = QS-Attn reference, §11.1)."""

    nce_layers: Tuple[int, ...] = (0, 4, 8, 12, 16)
    num_patches: int = 256
    nce_T: float = 0.07
    lambda_GAN: float = 1.0
    lambda_NCE: float = 1.0
    nce_idt: bool = True
    gan_mode: str = "lsgan"
    qs_mode: str = "global"            # global | local | local_global | none (= CUT)
    local_layout: str = "reference"    # reference (authors' scramble, §8.3) | geometric (§8.2)
    window: int = 7
    qs_slots: Optional[Tuple[int, ...]] = None  # None: slots >= 3 (§7.1)
    netF_nc: int = 256
    init_type: str = "xavier"
    init_gain: float = 0.02
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999


def is_qs_slot(s: int, opt: CUTOptions) -> bool:
    if opt.qs_mode == "none":
        return False
    if opt.qs_slots is None:
        return s >= 3
    return s in opt.qs_slots


# --------------------------------------------------------------------------- construction helpers


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def tap_shapes(G: ResnetGenerator, height: int, width: int,
               layers: Sequence[int] = (0, 4, 8, 12, 16)) -> List[Tuple[int, int, int]]:
    """(C, H, W) of each tapped map for an H×W input (one no-grad encode pass)."""
    p = next(G.parameters())
    with torch.no_grad():
        feats = G(torch.zeros(1, G.input_nc, height, width, dtype=p.dtype, device=p.device),
                  list(layers), encode_only=True)
    return [tuple(f.shape[1:]) for f in feats]


def make_F(opt: CUTOptions, channels: Sequence[int] = (3, 128, 256, 256, 256),
           device=None, dtype=None) -> ref.PatchSampleF:
    """netF with its MLPs built eagerly (Q16) from the tap channel counts and initialised
    (Xavier-normal gain ``opt.init_gain``, zero bias), as the lazy first call would."""
    F = ref.PatchSampleF(mode=opt.qs_mode, use_mlp=True, nc=opt.netF_nc,
                         local_layout=opt.local_layout, window=opt.window,
                         qs_slots=None if opt.qs_slots is None else list(opt.qs_slots),
                         init_gain=opt.init_gain)
    F.create_mlp([torch.zeros(1, int(c), 1, 1, device=device) for c in channels])
    if dtype is not None:
        F.to(dtype)
    return F


def build_models(opt: CUTOptions, ngf: int = 64, ndf: int = 64, n_blocks: int = 9,
                 n_layers_D: int = 3, input_nc: int = 3, output_nc: int = 3,
                 image_size: Tuple[int, int] = (64, 64), seed: Optional[int] = None,
                 dtype=torch.float32):
    """G, D, F built and initialised (§3.1); F's MLPs from G's tap channels."""
    if seed is not None:
        torch.manual_seed(seed)
    G = init_weights(ResnetGenerator(input_nc, output_nc, ngf, n_blocks), opt.init_type, opt.init_gain)
    D = init_weights(NLayerDiscriminator(output_nc, ndf, n_layers_D), opt.init_type, opt.init_gain)
    G.to(dtype)
    D.to(dtype)
    chans = [s[0] for s in tap_shapes(G, image_size[0], image_size[1], opt.nce_layers)]
    F = make_F(opt, chans, dtype=dtype)
    return G, D, F


def make_optimizers(G: nn.Module, D: nn.Module, F: nn.Module, opt: CUTOptions):
    """(opt_G, opt_D, opt_F): Adam(lr, (beta1, beta2)), eps 1e-8, no weight decay;
    opt_F is None when λ_NCE = 0 (Q25) or netF has no parameters (Q15)."""
    kw = dict(lr=opt.lr, betas=(opt.beta1, opt.beta2))
    opt_G = torch.optim.Adam(G.parameters(), **kw)
    opt_D = torch.optim.Adam(D.parameters(), **kw)
    fp = list(F.parameters())
    opt_F = torch.optim.Adam(fp, **kw) if (opt.lambda_NCE > 0 and fp) else None
    return opt_G, opt_D, opt_F


def draw_patch_ids(num_positions: Sequence[int], opt: CUTOptions,
                   generator: Optional[torch.Generator] = None) -> List[Optional[Tensor]]:
    """Random ids for the random slots (first min(N, P) of a uniform permutation, §7.2);
    ``None`` for the QS slots."""
    out: List[Optional[Tensor]] = []
    for s, P in enumerate(num_positions):
        if is_qs_slot(s, opt):
            out.append(None)
        else:
            out.append(torch.randperm(int(P), generator=generator)[: min(opt.num_patches, int(P))])
    return out


def tap_positions(G: ResnetGenerator, height: int, width: int, opt: CUTOptions) -> List[int]:
    return [h * w for (_, h, w) in tap_shapes(G, height, width, opt.nce_layers)]


# --------------------------------------------------------------------------- losses (§9, §10)


def calculate_NCE_loss(G: ResnetGenerator, F: ref.PatchSampleF, src: Tensor, tgt: Tensor,
                       opt: CUTOptions, patch_ids: Optional[Sequence[Optional[Tensor]]] = None,
                       return_details: bool = False):
    """L_NCE(src, tgt) = (1/n_slots) Σ_s λ_NCE · mean_r ℓ_r^{(s)}.

    Source call of netF on E(src) (random slots take ``patch_ids[s]``, or draw when
    ``patch_ids`` is None; QS slots compute their attention from the source), target call on
    E(tgt) with the returned ids / attention. Keys = source-call outputs (detached inside
    ``reference.patch_nce``), queries = target-call outputs; negatives per image with the
    actual batch ``src.shape[0]`` (Q3).

    Returns the total, or ``(total, details)`` with per-slot losses (already × λ_NCE),
    keys, queries, ids and attention tuples.
    """
    layers = list(opt.nce_layers)
    n_slots = len(layers)
    feat_q = G(tgt, layers, encode_only=True)
    feat_k = G(src, layers, encode_only=True)
    ids_arg = None if patch_ids is None else list(patch_ids)
    feat_k_pool, sample_ids, attn_mats = F(feat_k, opt.num_patches, ids_arg, None)
    feat_q_pool, _, _ = F(feat_q, opt.num_patches, sample_ids, attn_mats)
    nb = src.shape[0]
    total = 0.0
    per_slot: List[Tensor] = []
    for f_q, f_k in zip(feat_q_pool, feat_k_pool):
        loss = ref.patch_nce(f_q, f_k, tau=opt.nce_T, num_images=nb, reduction="none")
        term = (loss * opt.lambda_NCE).mean()
        per_slot.append(term)
        total = total + term
    total = total / n_slots
    if not return_details:
        return total
    return total, dict(per_slot=per_slot, keys=feat_k_pool, queries=feat_q_pool,
                       ids=sample_ids, attn=attn_mats)


def compute_D_loss(G: nn.Module, D: nn.Module, real_A: Tensor, real_B: Tensor, fake_B: Tensor,
                   gan_mode: str = "lsgan") -> Tuple[Tensor, Tensor, Tensor]:
    """L_D = ½·[L_gan(D(stopgrad(fake_B)), fake) + L_gan(D(real_B), real)].
    ``G`` and ``real_A`` are unused (kept for the reference's signature shape).
    Returns (loss_D, loss_D_fake, loss_D_real)."""
    crit = GANLoss(gan_mode)
    loss_fake = crit(D(fake_B.detach()), False).mean()
    loss_real = crit(D(real_B), True).mean()
    return (loss_fake + loss_real) * 0.5, loss_fake, loss_real


def compute_G_loss(G: ResnetGenerator, D: nn.Module, F: ref.PatchSampleF, real_A: Tensor,
                   real_B: Tensor, fake_B: Tensor, idt_B: Optional[Tensor], opt: CUTOptions,
                   patch_ids_x: Optional[Sequence[Optional[Tensor]]] = None,
                   patch_ids_y: Optional[Sequence[Optional[Tensor]]] = None,
                   return_details: bool = False) -> Dict[str, object]:
    """Terms of L_G (§10). Keys:

    * ``G_GAN`` = λ_GAN · mean L_gan(D(fake_B), real) (0 if λ_GAN = 0) — like the
      reference's ``loss_G_GAN`` it already includes λ_GAN;
    * ``NCE`` = L_NCE(real_A, fake_B), ``NCE_Y`` = L_NCE(real_B, idt_B) (0 when off);
    * ``G`` = G_GAN + ½(NCE + NCE_Y) with nce_idt, else G_GAN + NCE;
    * ``NCE_slots`` / ``NCE_Y_slots``: per-slot terms (× λ_NCE, before the 1/n_slots);
    * with ``return_details``: ``NCE_details`` / ``NCE_Y_details`` (see calculate_NCE_loss).

    D is NOT frozen here (``one_step`` does it, as the reference's optimize_parameters).
    """
    zero = fake_B.new_zeros(())
    out: Dict[str, object] = {}
    if opt.lambda_GAN > 0.0:
        out["G_GAN"] = GANLoss(opt.gan_mode)(D(fake_B), True).mean() * opt.lambda_GAN
    else:
        out["G_GAN"] = zero
    out["NCE"] = zero
    out["NCE_Y"] = zero
    out["NCE_slots"] = []
    out["NCE_Y_slots"] = []
    if opt.lambda_NCE > 0.0:
        nce, det = calculate_NCE_loss(G, F, real_A, fake_B, opt, patch_ids_x, return_details=True)
        out["NCE"], out["NCE_slots"] = nce, det["per_slot"]
        if return_details:
            out["NCE_details"] = det
    if opt.nce_idt and opt.lambda_NCE > 0.0:
        assert idt_B is not None
        nce_y, det_y = calculate_NCE_loss(G, F, real_B, idt_B, opt, patch_ids_y, return_details=True)
        out["NCE_Y"], out["NCE_Y_slots"] = nce_y, det_y["per_slot"]
        if return_details:
            out["NCE_Y_details"] = det_y
        nce_both = (out["NCE"] + out["NCE_Y"]) * 0.5
    else:
        nce_both = out["NCE"]
    out["G"] = out["G_GAN"] + nce_both
    return out


# --------------------------------------------------------------------------- one step (§11.5)


def forward(G: ResnetGenerator, real_A: Tensor, real_B: Tensor, opt: CUTOptions):
    """fake = G([x; y]) with nce_idt (one pass on 2B images), else G(x).
    Returns (fake_B, idt_B or None)."""
    B = real_A.shape[0]
    real = torch.cat((real_A, real_B), dim=0) if opt.nce_idt else real_A
    fake = G(real)
    fake_B = fake[:B]
    idt_B = fake[B:] if opt.nce_idt else None
    return fake_B, idt_B


def one_step(G: ResnetGenerator, D: nn.Module, F: ref.PatchSampleF, real_A: Tensor,
             real_B: Tensor, opt: CUTOptions,
             patch_ids_x: Optional[Sequence[Optional[Tensor]]] = None,
             patch_ids_y: Optional[Sequence[Optional[Tensor]]] = None,
             optimizers=None, return_details: bool = False) -> Dict[str, object]:
    """One optimisation step of CUT/QS-Attn (flip equivariance off).

    ``optimizers`` None: no Adam step. D's gradients (from L_D) and G's / F's gradients
    (from L_G, computed with the *un-updated* D) are left in ``.grad``.

    ``optimizers`` = (opt_G, opt_D, opt_F) (see ``make_optimizers``; opt_F may be None):
    reference order — zero D, L_D backward, D step; freeze D; zero G and F, L_G (with the
    just-updated D) backward, G step, F step. Gradients stay in ``.grad`` too.

    Zeroing uses set_to_none (torch ≥ 2 default). D's ``requires_grad`` is restored to True
    before returning (the reference leaves it False until the next D step; no numerical
    effect). Returns detached loss values (keys: D, D_fake, D_real, G_GAN, NCE, NCE_Y, G,
    NCE_slots, NCE_Y_slots), and ``fake_B`` / ``idt_B`` (detached).
    """
    opt_G = opt_D = opt_F = None
    if optimizers is not None:
        opt_G, opt_D, opt_F = optimizers

    fake_B, idt_B = forward(G, real_A, real_B, opt)

    # D step
    set_requires_grad(D, True)
    if opt_D is not None:
        opt_D.zero_grad(set_to_none=True)
    else:
        D.zero_grad(set_to_none=True)
    loss_D, loss_D_fake, loss_D_real = compute_D_loss(G, D, real_A, real_B, fake_B, opt.gan_mode)
    loss_D.backward()
    if opt_D is not None:
        opt_D.step()

    # G / F step
    set_requires_grad(D, False)
    if opt_G is not None:
        opt_G.zero_grad(set_to_none=True)
    else:
        G.zero_grad(set_to_none=True)
    if opt_F is not None:
        opt_F.zero_grad(set_to_none=True)
    else:
        F.zero_grad(set_to_none=True)
    g = compute_G_loss(G, D, F, real_A, real_B, fake_B, idt_B, opt, patch_ids_x, patch_ids_y,
                       return_details=return_details)
    g["G"].backward()
    if opt_G is not None:
        opt_G.step()
    if opt_F is not None:
        opt_F.step()
    set_requires_grad(D, True)

    out: Dict[str, object] = dict(
        D=loss_D.detach(), D_fake=loss_D_fake.detach(), D_real=loss_D_real.detach(),
        G_GAN=g["G_GAN"].detach(), NCE=g["NCE"].detach(), NCE_Y=g["NCE_Y"].detach(),
        G=g["G"].detach(),
        NCE_slots=[t.detach() for t in g["NCE_slots"]],
        NCE_Y_slots=[t.detach() for t in g["NCE_Y_slots"]],
        fake_B=fake_B.detach(), idt_B=None if idt_B is None else idt_B.detach(),
    )
    if return_details:
        for k in ("NCE_details", "NCE_Y_details"):
            if k in g:
                out[k] = g[k]
    return out


def param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
