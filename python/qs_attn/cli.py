"""The ``qs-attn`` command: train, resume, translate, import-pth, export-pth, evaluate, fid.

Options after the subcommand's own are the training options as ``--name value`` pairs with
the reference's names (``--n_epochs 5 --lambda_NCE 2 --nce_idt false``); values are parsed as
JSON where possible (numbers, true/false, lists like ``[0,4,8]``), else taken as strings.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List

from . import fid

__all__ = ["main"]


def _options(pairs: List[str]) -> Dict[str, object]:
    if len(pairs) % 2:
        raise SystemExit(f"options come in '--name value' pairs, got {pairs!r}")
    out: Dict[str, object] = {}
    for flag, value in zip(pairs[::2], pairs[1::2]):
        if not flag.startswith("--"):
            raise SystemExit(f"expected an option like --n_epochs, got {flag!r}")
        try:
            out[flag[2:]] = json.loads(value)
        except json.JSONDecodeError:
            out[flag[2:]] = value
    return out


def _exit_code(result) -> int:
    """0 when the run ended on schedule; 128 + the signal's number when Ctrl-C (130) or SIGTERM
    (143) stopped it, the shell's convention."""
    if not result.interrupted:
        return 0
    return 143 if (result.stopped_by or "").startswith("SIGTERM") else 130


def _report(result) -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # a torchrun launch: rank 0 reports
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return _exit_code(result)
    print(f"run folder:  {result.run_dir}")
    print(f"checkpoint:  {result.checkpoint}")
    if result.samples:
        print(f"samples:     {result.samples[-1]}")
    print(f"loss log:    {result.log}")
    print("final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.final_losses.items())))
    return _exit_code(result)


def main(argv=None) -> int:
    import qs_attn

    parser = argparse.ArgumentParser(prog="qs-attn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=qs_attn._version.version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train on a dataset folder (default: the bundled emoji set)")
    p.add_argument("--dataroot", default=None)
    p.add_argument("--name", default="experiment")
    p.add_argument("--mode", default="global", choices=qs_attn._native.OPTION_CHOICES["mode"])
    p = sub.add_parser("resume", help="continue a run from its checkpoint")
    p.add_argument("checkpoint")
    p = sub.add_parser("translate", help="translate an image or a folder with a trained generator")
    p.add_argument("generator", help="our checkpoint (.safetensors) or a reference latest_net_G.pth")
    p.add_argument("input", help="an image file or a folder")
    p.add_argument("output_dir")
    p.add_argument("--size", type=int, default=None,
                   help="resize to size x size (default: the training crop size; 0: native size)")
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("import-pth", help="make a training checkpoint from reference .pth files; the "
                                          "run's training options follow (--mode local --ngf 64 ...)")
    p.add_argument("out", help="checkpoint to write (.safetensors)")
    p.add_argument("--G", required=True)
    p.add_argument("--D")
    p.add_argument("--F")
    p = sub.add_parser("export-pth", help="write <prefix>_net_{G,D,F}.pth from our checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--prefix", default="latest")
    p = sub.add_parser("evaluate", help="FID, KID and (with ground truth) L1/SSIM on a test split")
    p.add_argument("target", help="our checkpoint (.safetensors), a reference latest_net_G.pth, "
                                  "or a run folder (latest and best checkpoints)")
    p.add_argument("--data", default=None, help="folder with testA/ and testB/ (default: the run's "
                                                "dataroot if it still exists, else the bundled set)")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--direction", default=None, choices=qs_attn._native.OPTION_CHOICES["direction"])
    p.add_argument("--size", type=int, default=None,
                   help="resize to size x size (default: the training crop size; 0: native size)")
    p.add_argument("--max-images", type=int, default=None,
                   help="only the first N images per split (quick checks; default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="cache the real images' features on disk here")
    fid.add_command(sub)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "train":
            return _report(qs_attn.train(args.dataroot, name=args.name, mode=args.mode, **_options(rest)))
        if args.command == "resume":
            return _report(qs_attn.resume(args.checkpoint, **_options(rest)))
        if args.command == "import-pth":
            files = {net: path for net, path in (("G", args.G), ("D", args.D), ("F", args.F)) if path}
            print(f"wrote {qs_attn.import_pth(files, args.out, **_options(rest))}")
            return 0
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "translate":
            size = "crop" if args.size is None else (args.size or None)
            written = qs_attn.translate(args.generator, args.input, args.output_dir, size=size, device=args.device)
            print(f"wrote {len(written)} images to {args.output_dir}")
        elif args.command == "export-pth":
            for path in qs_attn.export_pth(args.checkpoint, args.out_dir, args.prefix):
                print(f"wrote {path}")
        elif args.command == "evaluate":
            return _evaluate(args)
        elif args.command == "fid":
            return fid.run_command(args)
        return 0
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"qs-attn: error: {e}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .metrics import EvalExtraMissingError

    try:
        evaluate(
            args.target, args.data, json_path=args.json, device=args.device, direction=args.direction,
            size="crop" if args.size is None else (args.size or None), max_images=args.max_images,
            batch_size=args.batch_size, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
            cache_dir=args.cache_dir,
        )
    except EvalExtraMissingError as e:
        print(f"qs-attn: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
