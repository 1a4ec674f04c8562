"""One process of a distributed test run (launched by test_distributed.py with the torchrun
environment variables). Usage: dist_worker.py DATA OUT_DIR STEPS [STEP SIGNAL [TIMEOUT]]

With STEP and SIGNAL ("KILL" or "STOP"), rank 1 sends itself that signal at that iteration
(dies, or hangs); TIMEOUT is the collectives' timeout in seconds (default 20). With the
environment variable QS_TEST_RESUME=<checkpoint> the ranks resume that checkpoint instead.

Trains the tiny configuration for STEPS iterations with batch 1 per rank and saves, per
iteration, the losses and all G, D, F tensors as OUT_DIR/rank<r>.pt."""
import os
import signal
import sys

import torch

import qs_attn
import tiny_run

#: The tiny setup, one loader thread, epochs of 2 global batches (4 images, 2 ranks) x 3.
TINY = dict(tiny_run.TINY, num_threads=1, n_epochs=3, n_epochs_decay=0)


def main() -> None:
    data, out_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    sig = getattr(signal, f"SIG{sys.argv[5]}") if len(sys.argv) > 5 else None
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 20.0
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    records = []

    def record(info):
        if kill_at is not None and rank == 1 and info.step == kill_at:
            os.kill(os.getpid(), sig)
        records.append({"step": info.step, "losses": dict(info.losses), "nets": tiny_run.network_snapshot(info.trainer)})

    if os.environ.get("QS_TEST_RESUME"):
        result = qs_attn.resume(os.environ["QS_TEST_RESUME"], max_iters=steps, checkpoints_dir=os.path.join(out_dir, "runs"),
                                progress=False, callback=record, dist_timeout=timeout)
    else:
        result = qs_attn.train(data, "dist", "global", checkpoints_dir=os.path.join(out_dir, "runs"), max_iters=steps,
                               batch_size=1, progress=False, callback=record, dist_timeout=timeout, **TINY)
    torch.save({"records": records, "checkpoint": str(result.checkpoint) if result.checkpoint else None},
               os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
