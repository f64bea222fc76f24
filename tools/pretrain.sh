#!/usr/bin/env bash
# Launch pretraining on one or more processes / machines (torchrun): pretrain/launch.py.
#
#   tools/pretrain.sh CONFIG [--num-gpus N] [--num-procs P] [--num-machines M --machine-rank R
#                     --dist-url tcp://HOST:PORT] [--resume] [KEY VALUE ...]
#
#   --num-gpus N     processes per machine, one per GPU (default: all visible GPUs; 0 = CPU)
#   --num-procs P    with no GPU: CPU processes per machine (gloo), default 1
#   --num-machines M, --machine-rank R, --dist-url tcp://HOST:PORT
#                    multi-node: run the same command on every machine with its own rank;
#                    HOST:PORT is reachable on machine 0
#   --resume         continue from OUTPUT_DIR/last_checkpoint
# The interpreter is $PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-}"
[ -n "$py" ] || { [ -x "$here/.venv/bin/python" ] && py="$here/.venv/bin/python" || py=python3; }

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2
fi
exec "$py" -m pretrain.launch "$@"
