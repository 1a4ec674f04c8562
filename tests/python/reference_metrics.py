"""Independent transcriptions of the evaluation metrics for the tests (no qs_attn import):
FID from the features' nuclear norm, unbiased polynomial MMD², SSIM and the TF bilinear resize
with loops, the StyleGAN grid_sample form of that resize, and image files decoded by Pillow."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def pillow_pixels(path, mode="RGB"):
    """8-bit values of an image file decoded by Pillow (not our decoder), converted to ``mode``
    ("RGB", or "L" for Pillow's greyscale repeated in three channels), as a 1×3×H×W float32
    tensor in [0, 255]."""
    a = np.asarray(Image.open(path).convert(mode), dtype=np.float32)
    a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def fid_nuclear(x, y):
    """FID from the features alone: with centred X (n₁×d) and Y (n₂×d),
    Σ₁ = XᵀX/(n₁−1), Σ₂ = YᵀY/(n₂−1) and the non-zero eigenvalues of Σ₁Σ₂ are the squared
    singular values of XYᵀ/√((n₁−1)(n₂−1)), so tr(Σ₁Σ₂)^½ is that matrix's nuclear norm."""
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    n1, n2 = x.shape[0], y.shape[0]
    trace_sqrt = torch.linalg.svdvals(xc @ yc.T).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    tr1 = (xc * xc).sum() / (n1 - 1)
    tr2 = (yc * yc).sum() / (n2 - 1)
    return float((x.mean(0) - y.mean(0)).square().sum() + tr1 + tr2 - 2 * trace_sqrt)


def mmd2_loops(x, y):
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³, element by element."""
    d = len(x[0])

    def k(a, b):
        return (sum(float(p) * float(q) for p, q in zip(a, b)) / d + 1) ** 3

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def ssim_loops(x, y, window=11, sigma=1.5, k1=0.01, k2=0.03):
    """SSIM of two C×H×W images in [0, 1]: weighted moments window by window."""
    half = (window - 1) / 2
    w = [[math.exp(-((i - half) ** 2 + (j - half) ** 2) / (2 * sigma ** 2)) for j in range(window)] for i in range(window)]
    total = sum(map(sum, w))
    w = [[v / total for v in row] for row in w]
    c1, c2 = k1 ** 2, k2 ** 2
    c, h, wd = x.shape
    per_channel = []
    for ch in range(c):
        a, b = x[ch].tolist(), y[ch].tolist()
        vals = []
        for top in range(h - window + 1):
            for left in range(wd - window + 1):
                cells = [(w[i][j], a[top + i][left + j], b[top + i][left + j]) for i in range(window) for j in range(window)]
                mx = sum(q * p for q, p, _ in cells)
                my = sum(q * r for q, _, r in cells)
                vx = sum(q * (p - mx) ** 2 for q, p, _ in cells)
                vy = sum(q * (r - my) ** 2 for q, _, r in cells)
                cxy = sum(q * (p - mx) * (r - my) for q, p, r in cells)
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
        per_channel.append(sum(vals) / len(vals))
    return sum(per_channel) / c


def resize_loops(img, size):
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres) on an H×W list."""
    h, w = len(img), len(img[0])

    def coord(j, n_in):
        s = j * n_in / size
        lo = min(int(math.floor(s)), n_in - 1)
        return lo, min(lo + 1, n_in - 1), s - lo

    out = []
    for i in range(size):
        r0, r1, fr = coord(i, h)
        row = []
        for j in range(size):
            c0, c1, fc = coord(j, w)
            top = img[r0][c0] * (1 - fc) + img[r0][c1] * fc
            bottom = img[r1][c0] * (1 - fc) + img[r1][c1] * fc
            row.append(top * (1 - fr) + bottom * fr)
        out.append(row)
    return out


def resize_grid_sample(x, size):
    """The same resize as StyleGAN's FID code writes it: grid_sample (bilinear, border,
    align_corners=False) with the sampling grid shifted by 1/W − 1/size."""
    n, _, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / size], [0.0, 1.0, 1 / h - 1 / size]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
