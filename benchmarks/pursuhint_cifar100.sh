#!/usr/bin/env bash
# PURSUhInT on CIFAR-100: resnet110 -> resnet20 / resnet32, FitNet and AT hints, with the
# hint layers chosen by PURSUhInT vs the teacher's stage ends. Needs a GPU and
# cifar-100-python/ under DATA (default ./data); 240 epochs per run. Skips finished runs,
# resumes interrupted ones; EXTRA for overrides, e.g. EXTRA="--set schedule.epochs=2".
#   SEEDS="0 1 2" bash benchmarks/pursuhint_cifar100.sh
set -euo pipefail
cd "$(dirname "$0")/.."
C=configs/cifar100
H=$C/hints
DATA=${DATA:-data}
SEEDS=${SEEDS:-0}
STUDENTS=${STUDENTS:-"resnet20 resnet32"}
METHODS=${METHODS:-"fitnet at"}
EXTRA=${EXTRA:-}
source benchmarks/resumable_run.sh
run cifar100-teacher-resnet110 $C/base.yaml $C/teachers/resnet110.yaml
# the selection (printed, cached next to the teacher checkpoint, with its heat-map): once per teacher
kdforge hints $C/base.yaml $H/resnet110-resnet20.yaml $H/pursuhint.yaml --set data.root="$DATA"
for seed in $SEEDS; do
  for student in $STUDENTS; do
    for method in $METHODS; do
      for hints in pursuhint stage_ends; do
        run "cifar100-resnet110-$student-$method-$hints-seed$seed" $C/base.yaml $H/resnet110-$student.yaml \
          $H/$method.yaml $H/$hints.yaml --set seed=$seed
      done
    done
  done
done
echo "results: runs/cifar100-resnet110-*/summary.json"
