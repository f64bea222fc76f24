#!/usr/bin/env bash
# The one device call: install from the pack, report the environment, run the GPU benchmarks,
# and write every result to $OUT (at most 8 files come back). Prepared on the CPU, so a lent
# GPU's minutes go to measuring. docs/performance.md#gpu-runs says how to call it.
#
#   on the device (carry .device):   bash tools/device/run.sh
#   dry run here, tiny settings:     DRY_RUN=1 PYTHON=.venv/bin/python OUT=/tmp/out bash tools/device/run.sh
#
# Environment: OUT (required: results), PYTHON (default python3, the image's torch), PACK
# (default .device, made by tools/device/pack.py), DATA_DIR (default /tmp/ssl2det-data: data
# unpacked from the pack), DRY_RUN (1: the same commands at tiny settings on any machine),
# STEP_TIMEOUT (seconds per benchmark, default 150).
# The whole run aims at under 8 minutes on one H100/H200, so one rerun fits the 15 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder for the results}"
PY=${PYTHON:-python3}
PACK=${PACK:-.device}
DATA=${DATA_DIR:-/tmp/ssl2det-data}
DRY=${DRY_RUN:-0}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
LOG=$OUT/log.txt
START=$(date +%s)
mkdir -p "$OUT" "$DATA"
export PYTHONUNBUFFERED=1 DETECTRON2_DATASETS=$PACK/data/detectron2

say() { echo "[device +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
# bench NAME ARGS...: one benchmark, its output in the log; a failure is logged and the run
# goes on to the next one
bench() {
    local name=$1; shift
    say "$name: tools/benchmark.py $*"
    timeout "$STEP_TIMEOUT" "$PY" tools/benchmark.py "$@" >>"$LOG" 2>&1
    local code=$?
    [ $code -eq 0 ] && say "$name: done" || say "$name: FAILED (exit $code; 124 = over ${STEP_TIMEOUT}s)"
}

[ -d "$PACK/wheels" ] || { say "no pack at $PACK: run tools/device/pack.py first"; exit 2; }
say "install: setup_env.py --python $PY --find-links $PACK/wheels --no-index"
if ! "$PY" tools/install/setup_env.py --python "$(command -v "$PY")" --state-dir /tmp/ssl2det-setup \
        --find-links "$PACK/wheels" --no-index --with-tests > "$OUT/env.txt" 2>&1; then
    say "install FAILED: see env.txt"; cat /tmp/ssl2det-setup/setup.log >> "$LOG" 2>/dev/null; exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi >> "$OUT/env.txt" 2>&1

say "data: unpacking CIFAR-10, tiling imagenet-sample"
if [ "$DRY" = 1 ]; then REPEAT=1; else REPEAT=40; fi  # 100 images x 40 = 4000: 15 batches of 256
[ -d "$DATA/cifar10/train" ] || tar xzf "$PACK/data/cifar10-jpg.tar.gz" -C "$DATA" || exit 1
"$PY" - "$PACK/data/imagenet-sample/train" "$DATA/imagenet/train" "$REPEAT" <<'EOF' || exit 1
import sys
from pathlib import Path
src, dst, repeat = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), int(sys.argv[3])
for image in sorted(src.rglob("*.JPEG")):
    folder = dst / image.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(repeat):  # links: the loader still decodes a full-size JPEG each time
        link = folder / f"{image.stem}_{k}{image.suffix}"
        if not link.exists():
            link.symlink_to(image)
EOF

if [ "$DRY" = 1 ]; then
    R50=(--warmup 1 --iters 1 --repeats 1 MODEL.ARCH resnet18 INPUT.SIZE 32 SOLVER.BATCH_SIZE 8
         DATA.NUM_WORKERS 1 MODEL.CHANNELS_LAST False)
    R18=(--warmup 1 --iters 1 --repeats 1 SOLVER.BATCH_SIZE 8 DATA.NUM_WORKERS 1 MODEL.CHANNELS_LAST False)
    DET=(--warmup 2 --iters 1 --repeats 1 --config-file configs/cpu/coco_mask_rcnn_fpn_cpu.yaml
         SOLVER.IMS_PER_BATCH 1 DATALOADER.NUM_WORKERS 0)
    COMPILE=()
else
    R50=(--warmup 5 --iters 20 --repeats 2 SOLVER.BATCH_SIZE 256 DATA.NUM_WORKERS 14)
    R18=(--warmup 5 --iters 20 --repeats 1 SOLVER.BATCH_SIZE 512 DATA.NUM_WORKERS 14)
    DET=(--warmup 5 --iters 20 --repeats 1 --config-file configs/coco_mask_rcnn_fpn_1x.yaml
         SOLVER.IMS_PER_BATCH 8 SOLVER.REFERENCE_WORLD_SIZE 0 DATALOADER.NUM_WORKERS 8)
    COMPILE=(--warmup 10 --iters 20 --repeats 1 SOLVER.BATCH_SIZE 256 DATA.NUM_WORKERS 14)
fi

# SimCLR R50 224 px, bf16, channels_last, augmentation on the device: ours vs lightly
bench r50_224 pretrain --config-file configs/pretrain/simclr_r50_imagenet.yaml \
    --output "$OUT/r50_224.json" --profile "$OUT/r50_224_profile.txt" "${R50[@]}" \
    DATA.ROOT "$DATA/imagenet/train" INPUT.AUGMENT_ON_DEVICE True
# SimCLR R18, CIFAR stem, 32 px (InfoCL's CIFAR-10 recipe), batch 512: ours vs lightly
bench r18_32 pretrain --config-file configs/pretrain/infocl_cifar10_simclr.yaml \
    --output "$OUT/r18_32.json" "${R18[@]}" DATA.ROOT "$DATA/cifar10/train"
# Mask R-CNN R50-FPN at 800 px: our trainer vs detectron2's DefaultTrainer
bench mask_rcnn detection --output "$OUT/mask_rcnn_fpn.json" "${DET[@]}"
# torch.compile on the R50 setting, ours only, while time is left (compiling takes minutes)
if [ ${#COMPILE[@]} -gt 0 ] && [ $(( $(date +%s) - START )) -lt 300 ]; then
    bench r50_224_compile pretrain --config-file configs/pretrain/simclr_r50_imagenet.yaml \
        --sides ours --output "$OUT/r50_224_compile.json" "${COMPILE[@]}" \
        DATA.ROOT "$DATA/imagenet/train" INPUT.AUGMENT_ON_DEVICE True MODEL.COMPILE True
elif [ ${#COMPILE[@]} -gt 0 ]; then
    say "r50_224_compile: skipped (over 300 s spent)"
fi
say "finished; results: $(cd "$OUT" && ls | tr '\n' ' ')"
