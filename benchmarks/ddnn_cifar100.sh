#!/usr/bin/env bash
# DDNN + EKD on CIFAR-100 (Zhao et al., arXiv:2103.00793): one resnet56 holding resnet44/32/20 trained
# with embedded distillation vs each depth trained alone with the same schedule and seeds (kdforge ddnn;
# docs/ddnn.md). Needs a GPU and cifar-100-python/ under DATA (default ./data); 240 epochs per run,
# 5 runs per seed (1 DDNN + 4 independent), so days on one GPU.
# BNS lists the BatchNorm modes to compare: the first also trains the independent baselines, the others
# only the DDNN (compare them with the first table's independent column).
# Finished runs are reused and interrupted ones resumed: run it again after a crash.
#   SEEDS="0" BNS="switchable recalibrate" DATA=/data bash benchmarks/ddnn_cifar100.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data}
FULL=${FULL:-resnet56}
SUBNETS=${SUBNETS:-"resnet44 resnet32 resnet20"}
BNS=${BNS:-"switchable"}
SEEDS=${SEEDS:-"0 1 2"}
EXTRA=${EXTRA:-}
baseline=""
for bn in $BNS; do
  kdforge ddnn configs/cifar100/base.yaml --full "$FULL" --subnets $SUBNETS --bn "$bn" --seeds $SEEDS \
    --set data.root="$DATA" --out "runs/cifar100-ddnn-$FULL-$bn" $baseline $EXTRA
  baseline="--no-independent"
done
echo "results: runs/cifar100-ddnn-$FULL-*/results.md"
