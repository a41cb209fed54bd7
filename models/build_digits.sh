#!/usr/bin/env bash
# Rebuild the shipped default detector, ganaudit/models/digits.onnx, with ganaudit's own pipeline, then the
# demo folder's generated digits and the evaluation in the model card (models/digits.md).
#
#   bash models/build_digits.sh        # from the repository root, with the [train] and [dev] extras installed
#
# Normal/real = handwritten digits of every label: the MNIST test set images with index < 8000.
# Images with index >= 8000 are the benchmark test split (shared/BENCHMARKS.md, Q1/Q2): the model never
# sees them, and examples/images/normal/ is drawn from them.
# One thread on CPU: the same settings and seed give the same weights on any machine. About an hour on a
# shared 2-core machine (3,000 GAN, 2,000 encoder and 12,000 head steps). Afterwards, copy the printed numbers
# into models/digits.md.
set -euo pipefail
cd "$(dirname "$0")/.."

MNIST="${MNIST:-../shared/data/mnist/t10k-images-idx3-ubyte.gz}"
RUN="${RUN:-runs/digits}"
GANAUDIT="${GANAUDIT:-ganaudit}"
PYTHON="${PYTHON:-python}"
STEPS="${STEPS:-3000}"
ENCODER_STEPS="${ENCODER_STEPS:-2000}"
BATCH="${BATCH:-64}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ ! -f "$MNIST" ]; then
    echo "error: $MNIST not found; set MNIST=/path/to/t10k-images-idx3-ubyte.gz" >&2
    exit 2
fi
if [ -e "$RUN" ]; then
    echo "error: $RUN exists; remove it (or set RUN=another/dir) to train from scratch" >&2
    exit 2
fi

set -x
"$GANAUDIT" train "$MNIST" --index-range 0:8000 --out "$RUN" --size 32 --seed 0 --device cpu \
    --steps "$STEPS" --encoder-steps "$ENCODER_STEPS" --batch-size "$BATCH" --no-progress
"$GANAUDIT" export "$RUN" -o ganaudit/models/digits.onnx --name digits --fpr 0.01
"$GANAUDIT" info ganaudit/models/digits.onnx
"$PYTHON" models/make_demo_images.py --run "$RUN" --mnist "$MNIST"
"$PYTHON" models/evaluate_digits.py --run "$RUN" --mnist "$MNIST" --json "$RUN/evaluation.json"
