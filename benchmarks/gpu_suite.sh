#!/usr/bin/env bash
# The GPU speed suite (benchmarks/gpu_suite.py) on a machine that has jax, flax, optax, orbax,
# numpy, pillow, scipy (and torch) but not the rest of requirements.txt: the wheels in .whl/
# (docs/speed.md lists them and the command that downloads them) are installed into
# /tmp/site first, without their dependencies and without touching the machine's packages.
#
#   bash benchmarks/gpu_suite.sh --out_dir=$OUT [more gpu_suite.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && compgen -G '.whl/*.whl' > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
exec python3 benchmarks/gpu_suite.py "$@"
