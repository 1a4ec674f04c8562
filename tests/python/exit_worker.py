"""One process of test_distributed.py's exit test (launched with the torchrun environment
variables): joins the group through qs_attn.distributed, averages a few fresh gradient lists
and returns at once, so the interpreter exits right after its last collective."""
import torch

from qs_attn.distributed import GradientAverager, setup

if __name__ == "__main__":
    torch.set_num_threads(1)
    setup("cpu", 20.0)
    average = GradientAverager()
    for _ in range(20):
        average("G", [torch.randn(1000), torch.randn(10)])
