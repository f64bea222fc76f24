#!/usr/bin/env bash
# The one device call: install from the pack, report the environment, then
#   benchmarks (default): the GPU throughput benchmarks, ours against lightly and detectron2
#   study: InfoCL's CIFAR-10 SimCLR / +RC / +LBE on the full set, 2 seeds, as many epochs as the
#          timing model fits in STUDY_SECONDS (default 360), kNN every epoch, the linear probe
# and write every result to $OUT (at most 8 files come back). Prepared on the CPU, so a lent
# GPU's minutes go to measuring. docs/performance.md#gpu-runs and docs/results.md say how.
#
#   on the device (carry .device):   bash tools/device/run.sh [benchmarks|study]
#   dry run here, tiny settings:     DRY_RUN=1 PYTHON=.venv/bin/python OUT=/tmp/out bash tools/device/run.sh [study]
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
MODE=${1:-benchmarks}
case $MODE in benchmarks|study) ;; *) echo "usage: run.sh [benchmarks|study]" >&2; exit 2 ;; esac
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
if [ "$MODE" = study ] && [ "$DRY" = 1 ]; then REPEAT=0  # the dry study reads the shipped sample
elif [ ! -d "$DATA/cifar10/train" ]; then tar xzf "$PACK/data/cifar10-jpg.tar.gz" -C "$DATA" || exit 1
fi
# links: the loader still decodes a full-size JPEG each time
"$PY" tools/benchmark.py tile "$PACK/data/imagenet-sample/train" "$DATA/imagenet/train" "$REPEAT" \
    >> "$LOG" 2>&1 || exit 1

if [ "$MODE" = study ]; then
    if [ "$DRY" = 1 ]; then  # the shipped sample, a 60 s budget, small batches
        TRAIN=datasets/cifar10_tiny/train VAL=datasets/cifar10_tiny/test
        STUDY=(--batch-size 100 --linear-epochs 3 --workers 0 --set MODEL.CHANNELS_LAST False
               --set SOLVER.MAX_ITER 2)
        SECONDS_FOR_STUDY=${STUDY_SECONDS:-60} ITERS=3
    else  # InfoCL's recipe: batch 256; the whole train set decoded once on the GPU
        TRAIN=$DATA/cifar10/train VAL=$DATA/cifar10/test
        STUDY=(--batch-size 256 --linear-epochs 100 --workers 14)
        SECONDS_FOR_STUDY=${STUDY_SECONDS:-360} ITERS=30
    fi
    CONFIGS=(configs/pretrain/infocl_cifar10_simclr.yaml configs/pretrain/infocl_cifar10_simclr_rc.yaml
             configs/pretrain/infocl_cifar10_simclr_lbe.yaml)
    COMMON=(--train-root "$TRAIN" --val-root "$VAL" --seeds 2 "${STUDY[@]}" --set DATA.DECODE_ONCE True
            "${CONFIGS[@]}")
    say "study: timing model for $SECONDS_FOR_STUDY s"
    "$PY" tools/objective_study.py --out "$DATA/study" --estimate "$SECONDS_FOR_STUDY" \
        --estimate-iters "$ITERS" "${COMMON[@]}" > "$DATA/estimate.log" 2>&1 \
        || { cat "$DATA/estimate.log" >> "$LOG"; say "study: timing model FAILED"; exit 1; }
    cat "$DATA/estimate.log" >> "$LOG"
    EPOCHS=$(tail -n 1 "$DATA/estimate.log")
    if ! [ "$EPOCHS" -ge 1 ] 2>/dev/null; then
        [ "$DRY" = 1 ] || { say "study: no whole epoch fits $SECONDS_FOR_STUDY s (log.txt)"; exit 1; }
        EPOCHS=1  # the dry run checks the commands, not the budget
    fi
    say "study: $EPOCHS epochs x 2 seeds x ${#CONFIGS[@]} configs"
    "$PY" tools/objective_study.py --out "$DATA/study" --epochs "$EPOCHS" --knn-every 1 \
        "${COMMON[@]}" >> "$LOG" 2>&1 || say "study: FAILED (see log.txt)"
    for f in results.md results.json estimate.json report.md; do
        [ -f "$DATA/study/$f" ] && cp "$DATA/study/$f" "$OUT/study_$f"
    done
    say "finished; results: $(cd "$OUT" && ls | tr '\n' ' ')"
    exit 0
fi

if [ "$DRY" = 1 ]; then
    R50=(--warmup 1 --iters 1 --repeats 1 MODEL.ARCH resnet18 INPUT.SIZE 32 SOLVER.BATCH_SIZE 8
         DATA.NUM_WORKERS 1 MODEL.CHANNELS_LAST False)
    DET=(--warmup 2 --iters 1 --repeats 1 --config-file configs/cpu/coco_mask_rcnn_fpn_cpu.yaml
         SOLVER.IMS_PER_BATCH 1 DATALOADER.NUM_WORKERS 0)
    COMPILE=()
    LOADER=(--images 5 --repeats 1 INPUT.SIZE 32)
else
    R50=(--warmup 5 --iters 20 --repeats 2 SOLVER.BATCH_SIZE 256 DATA.NUM_WORKERS 14)
    R18=(--warmup 5 --iters 20 --repeats 1 SOLVER.BATCH_SIZE 512 DATA.NUM_WORKERS 14)
    DET=(--warmup 5 --iters 20 --repeats 1 --config-file configs/coco_mask_rcnn_fpn_1x.yaml
         SOLVER.IMS_PER_BATCH 8 SOLVER.REFERENCE_WORLD_SIZE 0 DATALOADER.NUM_WORKERS 8)
    COMPILE=(--warmup 10 --iters 20 --repeats 1 SOLVER.BATCH_SIZE 256 DATA.NUM_WORKERS 14)
    LOADER=(--images 300 --repeats 2)
fi

# the loader alone, one core per path: decode limits, our loader-side and device-side shares,
# lightly's transform (the GPU machine's CPU cores)
bench loader_224 loader --config-file configs/pretrain/simclr_r50_imagenet.yaml \
    --output "$OUT/loader_224.json" "${LOADER[@]}" DATA.ROOT "$DATA/imagenet/train"
# SimCLR R50 224 px, bf16, channels_last, augmentation on the device: ours vs lightly
bench r50_224 pretrain --config-file configs/pretrain/simclr_r50_imagenet.yaml \
    --output "$OUT/r50_224.json" --profile "$DATA/r50_224_profile.txt" "${R50[@]}" \
    DATA.ROOT "$DATA/imagenet/train" INPUT.AUGMENT_ON_DEVICE True
cat "$DATA/r50_224_profile.txt" >> "$LOG" 2>/dev/null  # (8 files come back: the table goes in the log)
# the same with the JPEGs decoded on the GPU (nvJPEG), ours only
bench r50_224_decode pretrain --config-file configs/pretrain/simclr_r50_imagenet.yaml \
    --sides ours --output "$OUT/r50_224_decode.json" "${R50[@]}" \
    DATA.ROOT "$DATA/imagenet/train" INPUT.AUGMENT_ON_DEVICE True INPUT.DECODE_ON_DEVICE True
# SimCLR R18, CIFAR stem, 32 px (InfoCL's CIFAR-10 recipe), batch 512: ours vs lightly (the dry
# run's R50 line is already this small model: it runs the command once, not twice)
[ "$DRY" = 1 ] || bench r18_32 pretrain --config-file configs/pretrain/infocl_cifar10_simclr.yaml \
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
