#!/usr/bin/env bash
# Every GPU path on the synthetic data, in under 8 minutes on one GPU machine, then the speed
# figures for the GPU. Run it whenever a GPU machine is at hand and copy its figures (with the
# machine's name) into the README:
#
#     bash bench/gpu_check.sh                  # PY=.venv/bin/python by default
#     PY=python WORK=/tmp/gpu_check bash bench/gpu_check.sh
#
# Steps (each prints one line; the first failure stops the script with its exit code):
#  1. synthetic AG (24 videos)
#  2. train-detector --device cuda (the small detector, 2 epochs: a detector file for detect)
#  3. detect --device cuda, then `store check`
#  4. torchrun --nproc_per_node=NGPU detect --device cuda (each rank on its GPU, one store)
#  5. train --device cuda (STTran + RS-Net, SGDET, 2 epochs), then --resume to 3 epochs
#  6. torchrun --nproc_per_node=NGPU train --device cuda (DDP, nccl)
#  7. eval --run --device cuda
#  8. figures: bench/detect_speed.py (r101-c4, 480x270) and bench/train_speed.py --setting
#     realistic (r101-c4 at 600 px, full-size STTran and STTran + RS-Net) on the GPU, written to
#     bench/results/gpu_detect_speed.json and bench/results/gpu_check.json; bench/report.py
#     then adds the GPU's column to the full-AG epoch projection.
# The project uses no AMP (mixed precision): there is no AMP path to check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to $PY (torch.cuda.is_available() is False): run it on a GPU machine" >&2
    exit 2
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU")
WORK=${WORK:-$(mktemp -d -t gpu_check.XXXXXX)}
START=$(date +%s)
step() { echo "[gpu_check $(( $(date +%s) - START )) s] $*"; }

step "$("$PY" -c "import torch; print(f'{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}')"), work in $WORK"
"$PY" cli.py synth --out "$WORK/ag" --videos 24 >/dev/null
step "synthetic AG: 24 videos"
"$PY" cli.py train-detector "$WORK/ag" --out "$WORK/det" --config configs/detector_small.yaml --epochs 2 --device cuda | tail -1
"$PY" cli.py detect "$WORK/ag" --store "$WORK/store.h5" --weights "$WORK/det/detector.pth" --device cuda | tail -1
"$PY" cli.py store check "$WORK/store.h5" | tail -1
"${TORCHRUN[@]}" cli.py detect "$WORK/ag" --store "$WORK/store_ddp.h5" --weights "$WORK/det/detector.pth" \
    --device cuda 2>&1 | grep "^detect:" | tail -$(( 2 * NGPU ))
"$PY" cli.py store check "$WORK/store_ddp.h5" | tail -1
TRAIN=(cli.py train --config configs/demo_sttran_rsnet.yaml --store "$WORK/store.h5" --no-progress --device cuda)
"$PY" "${TRAIN[@]}" --out "$WORK/run" --epochs 2 | tail -1
"$PY" "${TRAIN[@]}" --out "$WORK/run" --epochs 3 --resume | tail -1
"${TORCHRUN[@]}" "${TRAIN[@]}" --out "$WORK/run_ddp" --epochs 2 2>&1 | grep "^train:" | tail -1
"$PY" cli.py eval --run "$WORK/run" --device cuda --out "$WORK/eval" | grep -E "frames/s|R@" | tail -3
step "every GPU path ran; the figures:"
"$PY" bench/detect_speed.py --device cuda --arch r101-c4 --size 480x270 --rounds 1 \
    --out bench/results/gpu_detect_speed.json | tail -6
"$PY" bench/train_speed.py --setting realistic --device cuda --videos 4 --out bench/results/gpu_check.json
"$PY" bench/report.py | tail -12
step "done"
