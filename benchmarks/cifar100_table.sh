#!/usr/bin/env bash
# The standard CIFAR-100 KD table (CRD / RepDistiller pairs) with kdforge: train the six
# teachers, then every pair with every method. Needs a GPU and cifar-100-python/ under
# DATA (default ./data). 240 epochs each: days on one GPU; pass PAIRS / METHODS to run a subset,
# EXTRA for overrides, e.g.  EXTRA="--set schedule.epochs=2" for a smoke run.
#   PAIRS="resnet32x4-resnet8x4" METHODS="kd crd" bash benchmarks/cifar100_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
C=configs/cifar100
DATA=${DATA:-data}
PAIRS=${PAIRS:-$(ls $C/pairs | sed 's/\.yaml$//')}
METHODS=${METHODS:-$(ls $C/methods | sed 's/\.yaml$//')}
EXTRA=${EXTRA:-}
source benchmarks/resumable_run.sh
for pair in $PAIRS; do
  teacher=${pair%%-*}
  run "cifar100-teacher-$teacher" $C/base.yaml $C/teachers/$teacher.yaml
  for method in $METHODS; do
    run "cifar100-$pair-$method" $C/base.yaml $C/pairs/$pair.yaml $C/methods/$method.yaml
  done
done
echo "results: runs/cifar100-*/summary.json"
