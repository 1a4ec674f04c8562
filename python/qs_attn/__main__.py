"""``python -m qs_attn ...`` is the ``qs-attn`` command."""
import sys

from .cli import main

sys.exit(main())
