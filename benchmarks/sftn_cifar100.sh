#!/usr/bin/env bash
# SFTN on CIFAR-100: for each pair, a standard and an SFTN teacher, then students distilled
# from each with KD, FitNet, AT and CRD, side by side (kdforge sftn). Needs a GPU and
# cifar-100-python/ under DATA (default ./data); 240 epochs per run, so days on one GPU.
# Finished runs are reused and interrupted ones resumed: run it again after a crash.
#   PAIRS="resnet32x4-resnet8x4" METHODS="kd crd" SEEDS="0" bash benchmarks/sftn_cifar100.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data}
PAIRS=${PAIRS:-"resnet32x4-resnet8x4 wrn_40_2-wrn_16_2 resnet32x4-shufflenetv2"}
METHODS=${METHODS:-"kd fitnet at crd"}
SEEDS=${SEEDS:-"0 1 2"}
EXTRA=${EXTRA:-}
for pair in $PAIRS; do
  teacher=${pair%%-*}
  student=${pair#*-}
  lower_lr=""
  case $student in mobilenet*|shufflenet*) lower_lr="--student-set optim.lr=0.01";; esac   # as in the CRD table
  kdforge sftn configs/cifar100/base.yaml --teacher "$teacher" --student "$student" --methods $METHODS \
    --seeds $SEEDS --set data.root="$DATA" $lower_lr --out "runs/cifar100-sftn-$pair" $EXTRA
done
echo "results: runs/cifar100-sftn-*/results.md"
