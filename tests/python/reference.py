"""Plain-PyTorch oracle for the QS-Attn package, transcribed from the
maths of docs/algorithm.md (its §1, §7, §8, §9, §14; bare section and quirk numbers below refer
to it).

Everything is materialised (full P×P attention, full unfold); this module is the
*oracle* for the tests and must not import ``qs_attn``.

Conventions (§1):
  * feature maps are (B, C, H, W); ``flatten`` gives X (B, P, C) with raster index
    l = h*W + w;
  * local window slot t = (dy + r)*k + (dx + r), r = k // 2, zero padding r
    (padded slots take part in the softmax with logit 0, §8.2 / Q10);
  * entropies use the reference's exact formula: prob = -log(A); prob[isinf] = 0;
    ent = sum(A * prob)   (§8.1 step 3, Q6);
  * selection = stable ascending sort of the entropies, first N (§8.1 step 4, Q5).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

# --------------------------------------------------------------------------- basics


def flatten(feat: Tensor) -> Tensor:
    """B×C×H×W → B×P×C with X[b, h*W + w, c] = F[b, c, h, w]."""
    assert feat.dim() == 4
    return feat.flatten(2).transpose(1, 2)


def l2norm(v: Tensor) -> Tensor:
    """v / (‖v‖₂ + 1e-7), row-wise (§1)."""
    return v / (v.pow(2).sum(-1, keepdim=True).sqrt() + 1e-7)


def entropy_of(attn: Tensor) -> Tensor:
    """Row entropy over the last axis with the reference's literal formula.

    Computed on a detached copy: the entropy only produces integer indices (§8.5).
    """
    a = attn.detach()
    prob = -torch.log(a)
    prob[torch.isinf(prob)] = 0
    return torch.sum(a * prob, dim=-1)


def stable_select(ent: Tensor, num_patches: int) -> Tensor:
    """Stable ascending sort per image, first min(N, P) indices → (B, N) int64."""
    order = torch.sort(ent, dim=-1, stable=True).indices
    n = min(int(num_patches), ent.shape[-1])
    return order[:, :n]


def gather_rows(a: Tensor, sel: Tensor) -> Tensor:
    """a (B, P, ...) , sel (B, N) → a[b, sel[b], ...] (B, N, ...)."""
    b = torch.arange(a.shape[0], device=a.device)[:, None]
    return a[b, sel]


# --------------------------------------------------------------------------- global (§8.1)


def global_attn(X: Tensor) -> Tensor:
    """A = softmax(X Xᵀ) over the last axis; no scaling (§8.1 steps 1–2)."""
    S = torch.bmm(X, X.transpose(1, 2))
    return torch.softmax(S, dim=-1)


def global_entropy(X: Tensor) -> Tensor:
    return entropy_of(global_attn(X))


def global_select(X: Tensor, num_patches: int) -> Tuple[Tensor, Tensor]:
    """Returns (sel (B,N), A_QS (B,N,P)); A_QS keeps its graph (§8.5)."""
    A = global_attn(X)
    sel = stable_select(entropy_of(A), num_patches)
    return sel, gather_rows(A, sel)


def global_route(A_qs: Tensor, Y: Tensor) -> Tensor:
    """V = A_QS · Y, Y flattened (B, P, C) → (B, N, C)."""
    return torch.bmm(A_qs, Y)


# --------------------------------------------------------------------------- local, geometric (§8.2)


def geometric_neighbours(feat: Tensor, k: int) -> Tensor:
    """Nb[b, l, t, c] = F[b, c, h+dy, w+dx] (zero outside), t = (dy+r)*k + (dx+r).

    Built by explicit zero padding and shifting (independent of F.unfold's layout).
    Shape (B, P, k*k, C).
    """
    assert k % 2 == 1
    B, C, H, W = feat.shape
    r = k // 2
    padded = F.pad(feat, (r, r, r, r))
    slots = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            shifted = padded[:, :, r + dy : r + dy + H, r + dx : r + dx + W]
            slots.append(flatten(shifted))  # (B, P, C)
    return torch.stack(slots, dim=2)


def local_geometric_attn(feat: Tensor, k: int) -> Tensor:
    """A_loc (B, P, k*k): softmax over slots of <Nb_t(l), X_l> (§8.2 step 1)."""
    X = flatten(feat)
    Nb = geometric_neighbours(feat, k)
    logits = (Nb * X[:, :, None, :]).sum(-1)
    return torch.softmax(logits, dim=-1)


def local_geometric_entropy(feat: Tensor, k: int) -> Tensor:
    return entropy_of(local_geometric_attn(feat, k))


def local_geometric_select(feat: Tensor, num_patches: int, k: int) -> Tuple[Tensor, Tensor]:
    A = local_geometric_attn(feat, k)
    sel = stable_select(entropy_of(A), num_patches)
    return sel, gather_rows(A, sel)


def local_geometric_route(A_qs: Tensor, sel: Tensor, feat_y: Tensor, k: int) -> Tensor:
    """V[b,n,:] = Σ_t A_QS[b,n,t] · Nb_t(sel[b,n]) taken from feat_y (§8.2 step 4)."""
    Nb = geometric_neighbours(feat_y, k)  # (B, P, k², C)
    G = gather_rows(Nb, sel)  # (B, N, k², C)
    return torch.einsum("bnt,bntc->bnc", A_qs, G)


# --------------------------------------------------------------------------- local, reference scramble (§8.3)


def unfold(feat: Tensor, k: int) -> Tensor:
    """U (B, C*k*k, P) with U[b, c*k² + t, l] = Nb_t(l)[c] (channel-major)."""
    return F.unfold(feat, kernel_size=k, stride=1, padding=k // 2)


def local_reference_attn(feat: Tensor, k: int) -> Tensor:
    """Literal authors' reading: the channel-major column read as slot-major."""
    B, C, H, W = feat.shape
    P = H * W
    U = unfold(feat, k)
    keys = U.permute(0, 2, 1).reshape(B, P, k * k, C)
    X = flatten(feat)
    logits = torch.matmul(keys, X[..., None]).squeeze(-1)  # (B, P, k²)
    return torch.softmax(logits, dim=-1)


def local_reference_entropy(feat: Tensor, k: int) -> Tensor:
    return entropy_of(local_reference_attn(feat, k))


def local_reference_select(feat: Tensor, num_patches: int, k: int) -> Tuple[Tensor, Tensor]:
    A = local_reference_attn(feat, k)
    sel = stable_select(entropy_of(A), num_patches)
    return sel, gather_rows(A, sel)


def local_reference_route(A_qs: Tensor, sel: Tensor, feat_y: Tensor, k: int) -> Tensor:
    """Literal authors' value gather (general formula; B = 1, N != C does not crash here)."""
    B, C, H, W = feat_y.shape
    N = sel.shape[1]
    U = unfold(feat_y, k)  # (B, k²C, P)
    b = torch.arange(B, device=U.device)[:, None]
    Gt = U[b, :, sel]  # (B, N, k²C): Gt[b, p, f] = U[b, f, sel[b, p]]
    V = Gt.permute(0, 2, 1).reshape(B * N, k * k, C)  # row-major re-read
    out = torch.bmm(A_qs.reshape(B * N, 1, k * k), V)
    return out.reshape(B, N, C)


def local_reference_route_formula(A_qs: Tensor, sel: Tensor, feat_y: Tensor, k: int) -> Tensor:
    """Same as local_reference_route but written with the index formula of §8.3
    Ṽ[b·N + r, t, c] = Gt[b, p, f] with f·N + p = r·k²C + t·C + c (slow loops)."""
    B, C, H, W = feat_y.shape
    N = sel.shape[1]
    kk = k * k
    U = unfold(feat_y, k)
    out = torch.zeros(B, N, C, dtype=feat_y.dtype)
    for b in range(B):
        for r in range(N):
            for c in range(C):
                acc = 0.0
                for t in range(kk):
                    flat = r * kk * C + t * C + c
                    f, p = divmod(flat, N)
                    acc = acc + A_qs[b, r, t] * U[b, f, sel[b, p]]
                out[b, r, c] = acc
    return out


# --------------------------------------------------------------------------- dispatch helpers


def local_attn(feat: Tensor, k: int, layout: str) -> Tensor:
    if layout == "geometric":
        return local_geometric_attn(feat, k)
    if layout == "reference":
        return local_reference_attn(feat, k)
    raise ValueError(layout)


def local_entropy(feat: Tensor, k: int, layout: str) -> Tensor:
    return entropy_of(local_attn(feat, k, layout))


def local_route(A_qs: Tensor, sel: Tensor, feat_y: Tensor, k: int, layout: str) -> Tensor:
    if layout == "geometric":
        return local_geometric_route(A_qs, sel, feat_y, k)
    if layout == "reference":
        return local_reference_route(A_qs, sel, feat_y, k)
    raise ValueError(layout)


class RefSelection:
    """Oracle counterpart of qs_attn.QSSelection."""

    def __init__(self, mode, indices, attn, window, layout, height, width, source=None):
        self.mode = mode
        self.indices = indices
        self.attn = attn
        self.window = window
        self.local_layout = layout
        self.height = height
        self.width = width
        self.source = source  # flattened source X (cross mode query branch)


def select(feat: Tensor, num_patches: int, mode: str = "global", window: int = 7,
           local_layout: str = "geometric", detach_attn: bool = False) -> RefSelection:
    """Oracle for qs_attn.qs_select (source call)."""
    B, C, H, W = feat.shape
    X = flatten(feat)
    if mode in ("global", "cross"):
        sel, A_qs = global_select(X, num_patches)
    elif mode == "local":
        A = local_attn(feat, window, local_layout)
        sel = stable_select(entropy_of(A), num_patches)
        A_qs = gather_rows(A, sel)
    elif mode == "local_global":
        # §8.4: selection by the local entropy, attention rows from the global softmax.
        sel = stable_select(local_entropy(feat, window, local_layout), num_patches)
        A_qs = gather_rows(global_attn(X), sel)
    else:
        raise ValueError(mode)
    src = X
    if detach_attn:
        A_qs = A_qs.detach()
        src = X.detach()
    return RefSelection(mode, sel, A_qs, window, local_layout, H, W, source=src)


def route(feat: Tensor, s: RefSelection) -> Tensor:
    """Oracle for qs_attn.qs_route: (B, N, C)."""
    if s.mode == "local":
        return local_route(s.attn, s.indices, feat, s.window, s.local_layout)
    return global_route(s.attn, flatten(feat))


def cross_route(feat_tgt: Tensor, s: RefSelection) -> Tensor:
    """Extension (§8.7, brief): softmax(X_src[sel] · X_tgtᵀ) · X_tgt."""
    Xt = flatten(feat_tgt)
    Qs = gather_rows(s.source, s.indices)  # (B, N, C)
    A = torch.softmax(torch.bmm(Qs, Xt.transpose(1, 2)), dim=-1)
    return torch.bmm(A, Xt)


def entropy(feat: Tensor, mode: str = "global", window: int = 7,
            local_layout: str = "geometric") -> Tensor:
    if mode == "global":
        return global_entropy(flatten(feat))
    if mode == "local":
        return local_entropy(feat, window, local_layout)
    raise ValueError(mode)


# --------------------------------------------------------------------------- PatchNCE (§9)


def patch_nce(feat_q: Tensor, feat_k: Tensor, tau: float = 0.07, num_images: Optional[int] = None,
              reduction: str = "none", detach_keys: bool = True) -> Tensor:
    if detach_keys:
        feat_k = feat_k.detach()
    R, D = feat_q.shape
    nb = 1 if num_images is None else int(num_images)
    assert R % nb == 0
    M = R // nb
    l_pos = torch.bmm(feat_q.view(R, 1, D), feat_k.view(R, D, 1)).view(R, 1)
    qb = feat_q.view(nb, M, D)
    kb = feat_k.view(nb, M, D)
    l_neg = torch.bmm(qb, kb.transpose(2, 1))
    diag = torch.eye(M, dtype=torch.bool, device=feat_q.device)[None]
    l_neg = l_neg.masked_fill(diag, -10.0).view(R, M)
    out = torch.cat((l_pos, l_neg), dim=1) / tau
    loss = F.cross_entropy(out, torch.zeros(R, dtype=torch.long, device=feat_q.device),
                           reduction="none")
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(reduction)


# --------------------------------------------------------------------------- netF (§7)


class PatchSampleF(nn.Module):
    """Reference patch sampler + projection head (§7, authors' structure).

    modes: "global" | "local" (layout given by ``local_layout``, default "reference" as in
    the authors' code) | "local_global" | "none" (all slots random, CUT).
    Random slots take ``patch_ids[s]`` (shared by the batch) or draw a permutation.
    QS slots return in ``ids[s]`` the selected indices (B, N) and in ``attn_mats[s]`` the
    tuple (sel, A_QS) to pass back in the target call.
    """

    def __init__(self, mode: str = "global", use_mlp: bool = True, nc: int = 256,
                 local_layout: str = "reference", window: int = 7,
                 qs_slots: Optional[Sequence[int]] = None, init_gain: float = 0.02):
        super().__init__()
        self.mode = mode
        self.use_mlp = use_mlp
        self.nc = nc
        self.local_layout = local_layout
        self.window = window
        self.qs_slots = None if qs_slots is None else list(qs_slots)
        self.init_gain = init_gain
        self.mlp_init = False

    def is_qs(self, s: int) -> bool:
        if self.mode == "none":
            return False
        if self.qs_slots is None:
            return s >= 3
        return s in self.qs_slots

    def create_mlp(self, feats: Sequence[Tensor]) -> None:
        for s, feat in enumerate(feats):
            c = feat.shape[1]
            mlp = nn.Sequential(nn.Linear(c, self.nc), nn.ReLU(), nn.Linear(self.nc, self.nc))
            setattr(self, "mlp_%d" % s, mlp.to(device=feat.device))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight, gain=self.init_gain)
                nn.init.zeros_(m.bias)
        self.mlp_init = True

    def forward(self, feats, num_patches: int = 64, patch_ids=None, attn_mats=None):
        return_ids: List = []
        return_feats: List[Tensor] = []
        return_mats: List = []
        if self.use_mlp and not self.mlp_init:
            self.create_mlp(feats)
        k = self.window
        for s, feat in enumerate(feats):
            B, C, H, W = feat.shape
            X = flatten(feat)
            if not self.is_qs(s):
                if patch_ids is not None:
                    pid = patch_ids[s]
                else:
                    pid = torch.randperm(X.shape[1], device=feat.device)
                    pid = pid[: int(min(num_patches, pid.shape[0]))]
                x_sample = X[:, pid, :].flatten(0, 1)
                mat = torch.zeros(1, device=feat.device)
            else:
                if attn_mats is not None:
                    sel, A_qs = attn_mats[s]
                else:
                    if self.mode == "global":
                        sel, A_qs = global_select(X, num_patches)
                    elif self.mode == "local":
                        A = local_attn(feat, k, self.local_layout)
                        sel = stable_select(entropy_of(A), num_patches)
                        A_qs = gather_rows(A, sel)
                    elif self.mode == "local_global":
                        sel = stable_select(local_entropy(feat, k, self.local_layout), num_patches)
                        A_qs = gather_rows(global_attn(X), sel)
                    else:
                        raise ValueError(self.mode)
                if self.mode == "local":
                    v = local_route(A_qs, sel, feat, k, self.local_layout)
                else:
                    v = global_route(A_qs, X)
                x_sample = v.flatten(0, 1)
                pid = sel
                mat = (sel, A_qs)
            if self.use_mlp:
                x_sample = getattr(self, "mlp_%d" % s)(x_sample)
            return_ids.append(pid)
            return_mats.append(mat)
            return_feats.append(l2norm(x_sample))
        return return_feats, return_ids, return_mats


# --------------------------------------------------------------------------- test-data helpers


def sorted_gaps(ent: Tensor, num_patches: int) -> Tensor:
    """Min gap between consecutive sorted entropies over positions 0..N (per image)."""
    srt = torch.sort(ent.double(), dim=-1).values
    n = min(num_patches + 1, ent.shape[-1])
    if n < 2:
        return torch.full((ent.shape[0],), math.inf, dtype=torch.float64)
    return (srt[:, 1:n] - srt[:, : n - 1]).min(dim=-1).values


def assert_tie_free(ent: Tensor, num_patches: int, min_gap: float) -> None:
    g = sorted_gaps(ent, num_patches)
    assert bool((g > min_gap).all()), f"entropy ties: min gaps {g.tolist()} <= {min_gap}"


def tie_free_feat(shape, num_patches: int, entropy_fns, dtype=torch.float64, scale: float = 0.7,
                  min_gap: float = 2e-5, seed: int = 0, max_tries: int = 500) -> Tensor:
    """Deterministic random map (scale·randn) whose entropies (for every function in
    ``entropy_fns``, each feat → (B, P)) have consecutive sorted gaps > min_gap over the
    first N+1 positions. Tries seeds seed, seed+1, ... and returns the first that passes."""
    for s in range(seed, seed + max_tries):
        g = torch.Generator().manual_seed(s)
        f = (scale * torch.randn(*shape, generator=g, dtype=torch.float64))
        ok = True
        for fn in entropy_fns:
            ent = fn(f)
            if not bool((sorted_gaps(ent, num_patches) > min_gap).all()):
                ok = False
                break
            # also the entropies in the requested dtype must give the same order
            ent_lo = fn(f.to(dtype))
            if not torch.equal(stable_select(ent, num_patches), stable_select(ent_lo, num_patches)):
                ok = False
                break
        if ok:
            return f.to(dtype)
    raise RuntimeError("no tie-free features found")


def entropy_fn(mode: str, window: int = 7, layout: str = "geometric"):
    """feat → (B, P) entropy that drives the selection of ``mode``."""
    if mode in ("global", "cross"):
        return lambda f: global_entropy(flatten(f))
    return lambda f: local_entropy(f, window, layout)


def sin_map(B: int, C: int, H: int, W: int, dtype=torch.float32) -> Tensor:
    """T4/T9 input: F[b,c,h,w] = 1.5·sin(1.3c + 0.7h + 0.4w + 0.9b), built in float64."""
    b = torch.arange(B, dtype=torch.float64)[:, None, None, None]
    c = torch.arange(C, dtype=torch.float64)[None, :, None, None]
    h = torch.arange(H, dtype=torch.float64)[None, None, :, None]
    w = torch.arange(W, dtype=torch.float64)[None, None, None, :]
    return (1.5 * torch.sin(1.3 * c + 0.7 * h + 0.4 * w + 0.9 * b)).to(dtype)


def t3_map(dtype=torch.float32) -> Tensor:
    """T3 input: 2×3×4×4, F[b,:,h,w] = s[b,h,w]·u, u = (1,2,2)/3."""
    u = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3.0
    s = torch.zeros(2, 4, 4, dtype=torch.float64)
    for h in range(4):
        for w in range(4):
            k = (5 * (4 * h + w)) % 16
            s[0, h, w] = 0.1 * (k + 1)
            s[1, h, w] = 0.1 * (16 - k)
    return (s[:, None, :, :] * u[None, :, None, None]).to(dtype)


def local_border_entropy(n: int, k: int = 7) -> float:
    """T8: H(n) = ln Z − n·e/Z, Z = n·e + k² − n, for a constant map F = 1, C = 1."""
    Z = n * math.e + k * k - n
    return math.log(Z) - n * math.e / Z


def exact_entropy(logits) -> float:
    """Entropy of softmax(logits) in Python floats (log-sum-exp form)."""
    m = max(logits)
    z = sum(math.exp(x - m) for x in logits)
    lse = m + math.log(z)
    return sum(math.exp(x - lse) * (lse - x) for x in logits)
