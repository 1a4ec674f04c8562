"""Multi-seed quality study on a bundled benchmark (default: the colour -> monochrome emoji set):
CUT (random patches, mode "none") and QS-Attn "global", "local" and "cross", each with the
reference's training ("plain"), with the data-efficient options ("de": DiffAugment of D's
inputs and the EMA of G), with the EMA alone ("ema"), with the EMA on a G of 6 residual blocks
("ema6") or with the EMA and the contrastive loss weighted 2 ("nce2"), over several seeds, all
at one budget of iterations. Every run is
evaluated during training (FID, KID against testB; L1/SSIM against the true counterparts) with
best and last checkpoints; the identity, greyscale and real-vs-real baselines are computed here
too, with the same protocol. Runs `--parallel` trainings at a time, one thread each.

    python benches/quality.py --out runs/study                         # train what is missing, then report
    python benches/quality.py --out runs/study --report                # the tables of what has finished
    python benches/quality.py --out runs/study --docs docs/results.md  # results.md, figure and grid from the output

Defaults: 4 methods x 2 recipes (plain, de) x 3 seeds = 24 runs of 1,026 iterations (one
epoch of the 1,026 training pairs at constant lr, ngf = ndf = 16), evaluated at 513 and 1,026.
`--epochs` and `--decay-epochs` set the schedule (lr constant, then decaying linearly, as the
reference's n_epochs / n_epochs_decay); `--iters` caps it; `--methods`, `--recipes` and
`--seeds` shrink the study; the report says what ran. `--section` names the block of the
markdown file (and its figures) that `--docs` rewrites, so studies at several budgets can stand
side by side:

    python benches/quality.py --out runs/study_5ep --epochs 2 --decay-epochs 3 --eval-freq 1026 \
        --methods global --recipes plain,ema,de                           # the main job's budget
    python benches/quality.py --out runs/study_5ep --epochs 2 --decay-epochs 3 --eval-freq 1026 \
        --methods none,local,cross --recipes ema                          # the other methods there
    python benches/quality.py --out runs/study_5ep --epochs 3 --decay-epochs 3 --eval-freq 1026 \
        --methods global --recipes ema6                                   # six epochs of a cheaper G
    python benches/quality.py --out runs/study_5ep --docs docs/results.md --section study_5ep
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("none", "global", "local", "cross")
RECIPES = {
    "plain": {},
    "de": {"diff_augment": "translation,cutout", "ema_decay": 0.999},
    "ema": {"ema_decay": 0.999},
    # the moving average on a cheaper G: 6 residual blocks instead of 9 (~14% less time per
    # iteration on 2 CPU cores), so six epochs fit the time of five
    "ema6": {"ema_decay": 0.999, "n_blocks": 6},
    # the EMA with the contrastive term weighted twice the adversarial one (the reference: equal)
    "nce2": {"ema_decay": 0.999, "lambda_NCE": 2.0},
}
# the main job's options every run shares (its network and data); the method, schedule and
# recipe come from the command line
BASE_OPTIONS = ("crop_size", "load_size", "ngf", "ndf", "num_patches")
METRICS = (("fid", "FID ↓", 1.0, 1), ("kid_mean", "KID ×100 ↓", 100.0, 2), ("l1", "L1 ↓", 1.0, 4), ("ssim", "SSIM ↑", 1.0, 4))
LABEL = {"none": "CUT", "global": "QS global", "local": "QS local", "cross": "QS cross"}


def run_name(method: str, recipe: str, seed: int) -> str:
    return f"{method}_{recipe}_s{seed}"


def train_one(args) -> None:
    import torch

    import qs_attn

    # read from the main job itself, so the two cannot drift apart (imported here, with torch,
    # not at the top: the report and the orchestrating process need neither)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from train_emoji_mono import RECIPE as MAIN_JOB

    main_job_options = {k: MAIN_JOB[k] for k in BASE_OPTIONS}
    torch.set_num_threads(1)
    data = qs_attn.bundled_dataset(args.data)
    start = time.perf_counter()
    name = run_name(args.method, args.recipe, args.seed)
    result = qs_attn.train(name=name, dataroot=str(data), checkpoints_dir=args.out, mode=args.method, seed=args.seed,
                           max_iters=args.iters, num_threads=1, print_freq=100, display_freq=10**9,
                           save_epoch_freq=100, save_latest_freq=10**9, eval_freq=args.eval_freq, progress=False,
                           n_epochs=args.epochs, n_epochs_decay=args.decay_epochs, **main_job_options, **RECIPES[args.recipe])
    summary = {"method": args.method, "recipe": args.recipe, "seed": args.seed, "iterations": result.total_iters,
               "seconds": time.perf_counter() - start, "best": result.best, "last": result.evaluations[-1],
               "evaluations": result.evaluations}
    (Path(args.out) / name / "summary.json").write_text(json.dumps(summary, indent=1))


# the keys of baselines.json; qs_attn.baselines.<key>_scores computes each
BASELINES = ("identity", "greyscale", "real_vs_real")


def stored_baselines(out: Path) -> dict:
    path = out / "baselines.json"
    return json.loads(path.read_text()) if path.exists() else {}


def baselines(out: Path, data_name: str) -> dict:
    """The baselines' scores, kept in ``out/baselines.json``; computes those it lacks."""
    import qs_attn
    from qs_attn import baselines as b

    result = stored_baselines(out)
    missing = [k for k in BASELINES if k not in result]
    if missing:
        data = qs_attn.bundled_dataset(data_name)
        result.update({k: getattr(b, f"{k}_scores")(data, cache_dir=out / "eval_cache") for k in missing})
        out.mkdir(parents=True, exist_ok=True)
        (out / "baselines.json").write_text(json.dumps(result, indent=1))
    return result


def summaries(out: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]


def welch_p(a: list, b: list) -> float:
    """Two-sided p-value of Welch's t-test (the t distribution's tail by numerical integration)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return 0.0 if statistics.fmean(a) != statistics.fmean(b) else 1.0
    t = abs(statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    pdf = lambda x: math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) * (1 + x * x / df) ** (-(df + 1) / 2)
    steps = 4000  # Simpson on [0, t]: P(|T| > t) = 1 − 2∫₀ᵗ pdf
    h = t / steps
    area = pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return max(0.0, 1.0 - 2.0 * area * h / 3.0)


def groups(rows: list) -> dict:
    out = {}
    for s in rows:
        out.setdefault((s["method"], s["recipe"]), []).append(s)
    return out


def fmt(values: list, scale: float, digits: int) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(out: Path) -> str:
    rows = summaries(out)
    base = stored_baselines(out) or None
    if not rows and not base:
        return "no finished runs and no baselines yet"
    by = groups(rows)
    lines = ["| method | recipe | seeds | iterations | minutes / run | checkpoint | " + " | ".join(m[1] for m in METRICS) + " |",
             "| --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for (method, recipe), runs in sorted(by.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
        for which in ("best", "last"):
            cells = [fmt([r[which][k] for r in runs], sc, d) for k, _, sc, d in METRICS]
            lines.append(f"| {LABEL[method]} | {recipe} | {len(runs)} | {runs[0]['iterations']} | "
                         f"{statistics.fmean(r['seconds'] for r in runs) / 60:.0f} | {which} | " + " | ".join(cells) + " |")
    if base:
        i, r = base["identity"], base["real_vs_real"]
        lines.append(f"| identity (untranslated A) | - | - | - | - | - | {i['fid']:.1f} | {100 * i['kid_mean']:.2f} | "
                     f"{i['l1']:.4f} | {i['ssim']:.4f} |")
        if "greyscale" in base:
            g = base["greyscale"]
            lines.append(f"| greyscale A (colour removed, nothing drawn) | - | - | - | - | - | {g['fid']:.1f} | "
                         f"{100 * g['kid_mean']:.2f} | {g['l1']:.4f} | {g['ssim']:.4f} |")
        lines.append(f"| real vs real ({r['draws']} draws of trainB) | - | - | - | - | - | {r['fid']:.1f} ± {r['fid_std']:.1f} | "
                     f"{100 * r['kid_mean']:.2f} ± {100 * r['kid_std']:.2f} | - | - |")
    pairs = []
    for recipe in RECIPES:
        pairs += [((m, recipe), ("none", recipe)) for m in METHODS[1:]]
    pairs += [((m, r), (m, "plain")) for m in METHODS for r in RECIPES if r != "plain"]
    pairs += [((m, "de"), (m, "ema")) for m in METHODS]  # DiffAugment's own part: both average G
    pairs += [((m, "ema6"), (m, "ema")) for m in METHODS]  # the cheaper G, more epochs in the same time
    pairs += [((m, "nce2"), (m, "ema")) for m in METHODS]  # the weight of the contrastive term alone
    pairs = [(x, y) for x, y in pairs if x in by and y in by]
    if pairs:
        lines += ["", "Welch's t-test on the last checkpoints (two-sided p; n = seeds per cell):", "",
                  "| comparison | " + " | ".join(m[1] for m in METRICS) + " |", "| --- | " + " | ".join("---" for _ in METRICS) + " |"]
    significant, tested = [], 0
    for x, y in pairs:
        ps = [welch_p([r["last"][k] for r in by[x]], [r["last"][k] for r in by[y]]) for k, *_ in METRICS]
        lines.append(f"| {LABEL[x[0]]} {x[1]} vs {LABEL[y[0]]} {y[1]} | " + " | ".join(f"{p:.3f}" for p in ps) + " |")
        for (k, title, *_), p in zip(METRICS, ps):
            tested += p == p  # a cell with one seed has no test (nan)
            if p < 0.05:
                mx, my = (statistics.fmean(r["last"][k] for r in by[c]) for c in (x, y))
                better = mx > my if k == "ssim" else mx < my
                significant.append(f"{LABEL[x[0]]} {x[1]} {'better' if better else 'worse'} than "
                                   f"{LABEL[y[0]]} {y[1]} on {title.split()[0]} (p = {p:.3f})")
    if pairs:
        lines += ["", f"Significant at p < 0.05 ({tested} tests, no correction for multiple comparisons, so about "
                  f"{0.05 * tested:.1f} would pass by chance alone): " + ("; ".join(significant) if significant else "none") + "."]
    if base:
        lines += ["", "Last checkpoint vs the untranslated input, KID ×100 (margin = identity − mean; goal: margin > 2 std of the seeds):", ""]
        for (method, recipe), runs in sorted(by.items()):
            kids = [100 * r["last"]["kid_mean"] for r in runs]
            sd = statistics.stdev(kids) if len(kids) > 1 else float("nan")
            margin = 100 * base["identity"]["kid_mean"] - statistics.fmean(kids)
            ssim_gap = statistics.fmean(r["last"]["ssim"] for r in runs) - base["identity"]["ssim"]
            lines.append(f"- {LABEL[method]} {recipe}: margin {margin:.2f}, 2 std {2 * sd:.2f} "
                         f"({'met' if margin > 2 * sd else 'not met'}); SSIM − identity's {ssim_gap:+.4f} "
                         f"({'met' if ssim_gap >= -0.02 else 'not met'})")
    return "\n".join(lines)


def figure(out: Path, png: Path) -> None:
    """Bars: mean ± std over seeds of the last checkpoints' KID and SSIM per cell, with the
    identity, greyscale and real-vs-real levels as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = groups(summaries(out))
    base = stored_baselines(out)
    keys = sorted(by, key=lambda k: (METHODS.index(k[0]), k[1]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (metric, title, scale) in zip(axes, (("kid_mean", "KID ×100 (lower is better)", 100.0), ("ssim", "SSIM to the true drawing (higher is better)", 1.0))):
        vals = [[scale * r["last"][metric] for r in by[k]] for k in keys]
        means = [statistics.fmean(v) for v in vals]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
        ax.bar(range(len(keys)), means, yerr=stds, capsize=4, color=["#888" if k[1] == "plain" else "#2a7" for k in keys])
        ax.axhline(scale * base["identity"][metric], color="r", ls="--", label="identity (untranslated)")
        if "greyscale" in base:
            ax.axhline(scale * base["greyscale"][metric], color="k", ls="-.", label="greyscale A")
        if metric == "kid_mean":
            ax.axhline(scale * base["real_vs_real"]["kid_mean"], color="b", ls=":", label="real vs real")
        ax.set_xticks(range(len(keys)), [f"{LABEL[m]}\n{r}" for m, r in keys], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower left", framealpha=0.9)  # over the bars' bodies, not their tops
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def grid(out: Path, png: Path, data_name: str, n: int = 6) -> list:
    """Rows: the first ``n`` test images; columns: source | the last checkpoint of each cell's
    first seed | ground truth. Returns the column labels."""
    import torch

    import qs_attn
    from qs_attn import _native

    data = qs_attn.bundled_dataset(data_name)
    by = groups(summaries(out))
    keys = sorted(by, key=lambda k: (METHODS.index(k[0]), k[1]))
    gens = [qs_attn.load_generator(out / run_name(m, r, min(s["seed"] for s in by[(m, r)])) / "latest.safetensors") for m, r in keys]
    names = sorted(p.name for p in (data / "testA").iterdir())[:n]
    rows = []
    with torch.no_grad():
        for name in names:
            a = _native.load_image(str(data / "testA" / name), 64)
            b = _native.load_image(str(data / "testB" / name), 64)
            cells = [a[0]] + [g(a)[0] for g in gens] + [b[0]]
            rows.append(torch.cat([torch.nn.functional.pad(c, (2, 2, 2, 2), value=1.0) for c in cells], dim=2))
    png.parent.mkdir(parents=True, exist_ok=True)
    _native.save_image(torch.cat(rows, dim=1), str(png))
    return ["source"] + [f"{LABEL[m]} {r}" for m, r in keys] + ["true drawing"]


def write_docs(out: Path, md: Path, data_name: str, section: str) -> None:
    """The `section` block of docs/results.md from the study's output (numbers only from this script)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    fig_png, grid_png = md.parent / "results" / f"{section}.png", md.parent / "results" / f"{section}_grid.png"
    rows = summaries(out)
    seeds = sorted({r["seed"] for r in rows})
    iters = sorted({r["iterations"] for r in rows})
    text = (md.read_text() if md.exists() else "")
    head, sep, tail = text.partition(f"<!-- {section}:begin -->")
    _, sep2, rest = tail.partition(f"<!-- {section}:end -->")
    body = (f"<!-- {section}:begin -->\n_Generated by `python benches/quality.py --out {out} --docs {md} --section {section}` "
            f"at commit `{commit}`: "
            f"{len(rows)} runs, seeds {seeds}, {iters} iterations per run, on {os.cpu_count()} CPU cores._\n\n"
            + report(out))
    if rows:
        figure(out, fig_png)
        columns = grid(out, grid_png, data_name)
        body += (f"\n\n![last checkpoints: KID and SSIM per cell]({fig_png.relative_to(md.parent)})\n\n"
                 f"Test images (rows); columns: {' | '.join(columns)} (last checkpoints, first seed):\n\n"
                 f"![translations]({grid_png.relative_to(md.parent)})")
    body += f"\n<!-- {section}:end -->"
    md.write_text(head + body + rest if sep and sep2 else text + "\n" + body + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study")
    p.add_argument("--data", default="emoji_mono", help="bundled dataset name")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--recipes", default="plain,de", help=f"any of {','.join(RECIPES)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=1, help="epochs at constant lr")
    p.add_argument("--decay-epochs", type=int, default=0, help="epochs of linear lr decay after them (the reference's n_epochs_decay)")
    p.add_argument("--iters", type=int, help="cap on iterations (default: the whole schedule)")
    p.add_argument("--eval-freq", type=int, default=513)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--report", action="store_true", help="print the tables of the finished runs")
    p.add_argument("--docs", metavar="MD", help="rewrite the study section of this markdown file, its figure and grid")
    p.add_argument("--section", default="study", help="the markers of that section: <!-- SECTION:begin/end -->")
    p.add_argument("--baselines", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    if args.method:
        train_one(args)
        return
    if args.baselines:
        import torch

        torch.set_num_threads(1)
        baselines(out, args.data)
        return
    if args.report:
        print(report(out))
        return
    if args.docs:
        write_docs(out, Path(args.docs), args.data, args.section)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread per process: no oversubscription
    # the baselines first if any is missing, then every seed of a cell before the next cell (complete cells first)
    pending = [None] if any(k not in stored_baselines(out) for k in BASELINES) else []
    pending += [(m, r, s) for m in args.methods.split(",") for r in args.recipes.split(",")
                for s in map(int, args.seeds.split(",")) if not (out / run_name(m, r, s) / "summary.json").exists()]
    common = [sys.executable, __file__, "--out", str(out), "--data", args.data]
    running = []
    while pending or running:
        while pending and len(running) < args.parallel:
            cell = pending.pop(0)
            cmd = common + (["--baselines"] if cell is None else
                            ["--method", cell[0], "--recipe", cell[1], "--seed", str(cell[2]), "--epochs", str(args.epochs),
                             "--decay-epochs", str(args.decay_epochs), "--eval-freq", str(args.eval_freq)]
                            + ([] if args.iters is None else ["--iters", str(args.iters)]))
            running.append((cell, subprocess.Popen(cmd, env=env)))
        time.sleep(5)
        for cell, proc in list(running):
            if proc.poll() is not None:
                running.remove((cell, proc))
                if proc.returncode:
                    print(f"run {cell} failed ({proc.returncode})", file=sys.stderr)
    print(report(out))


if __name__ == "__main__":
    main()
