#!/usr/bin/env bash
# nnlab's GPU check (issue 24): every GPU path a few steps through the real `nnlab train`, then a
# table of what passed and its throughput (docs/scaling.md, "GPU check").
#   bash tests/gpu/run.sh --out gpu-check     # on a machine with a CUDA GPU: under 8 minutes
#   bash tests/gpu/run.sh --dry-run           # the same matrix on the CPU, a couple of steps each
#   bash tests/gpu/run.sh --help              # --only PATH..., --timeout, --keep, --list
# Exit 0 when every path passed, 1 when any failed, 2 when asked for a GPU the machine lacks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# the project's environment, unless one is active already
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    source .venv/bin/activate
fi
exec python -m tests.gpu.run_paths "$@"
