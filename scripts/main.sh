#!/usr/bin/env bash
# The main job: set everything up (see setup.sh), then run it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python examples/train_emoji_mono.py "$@"
