"""``python -m qs_attn ...`` (and ``torchrun --nproc_per_node=N -m qs_attn train ...``): the CLI."""
import sys

from .cli import main

sys.exit(main())
