#!/usr/bin/env bash
# Launch pretraining on one or more processes / machines (torchrun).
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
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2
fi
config="$1"; shift
gpus=""; procs=1; machines=1; machine_rank=0; dist_url="tcp://127.0.0.1:29500"; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --num-gpus) gpus="$2"; shift 2 ;;
    --num-procs) procs="$2"; shift 2 ;;
    --num-machines) machines="$2"; shift 2 ;;
    --machine-rank) machine_rank="$2"; shift 2 ;;
    --dist-url) dist_url="$2"; shift 2 ;;
    --resume) extra+=("--resume"); shift ;;
    *) break ;;
  esac
done
if [ -z "$gpus" ]; then
  gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
fi
if [ "$gpus" -gt 0 ]; then nproc="$gpus"; device=(); else nproc="$procs"; device=(MODEL.DEVICE cpu); fi

hostport="${dist_url#tcp://}"
cmd=("$here/tools/pretrain.py" --config-file "$config" "${extra[@]}" "$@" "${device[@]}")
if [ "$nproc" -eq 1 ] && [ "$machines" -eq 1 ]; then
  exec "$py" "${cmd[@]}"
fi
exec "$py" -m torch.distributed.run --nproc_per_node "$nproc" --nnodes "$machines" \
  --node_rank "$machine_rank" --master_addr "${hostport%:*}" --master_port "${hostport##*:}" \
  "${cmd[@]}"
