#!/usr/bin/env bash
# The standard CIFAR-100 KD table (CRD / RepDistiller pairs) with kdforge: train the six
# teachers, then every pair with every method. Needs a GPU and cifar-100-python/ under
# DATA (default ./data). 240 epochs each: days on one GPU; pass PAIRS / METHODS to run a subset,
# EXTRA for overrides, e.g.  EXTRA="--set schedule.epochs=2" for a smoke run.
#   PAIRS="resnet32x4-resnet8x4" METHODS="kd crd" bash benchmarks/cifar100_table.sh
# TEACHERS=DIR uses the published 240-epoch teachers instead of training them: RepDistiller's /
# mdistiller's files as they ship them, DIR/<teacher>_vanilla/ckpt_epoch_240.pth (any case, e.g.
# ResNet50_vanilla), or DIR/<teacher>.pth; a teacher without a file there is trained as usual.
# Then: kdforge report runs/cifar100-* --reference cifar100 puts the published numbers beside ours.
set -euo pipefail
cd "$(dirname "$0")/.."
C=configs/cifar100
DATA=${DATA:-data}
PAIRS=${PAIRS:-$(ls $C/pairs | sed 's/\.yaml$//')}
METHODS=${METHODS:-$(ls $C/methods | sed 's/\.yaml$//')}
EXTRA=${EXTRA:-}
source benchmarks/resumable_run.sh
published_teacher() {  # the published file of teacher $1 under $TEACHERS, or nothing
  [ -n "${TEACHERS:-}" ] || return 0
  local dir
  dir=$(find "$TEACHERS" -maxdepth 1 -type d -iname "$1_vanilla" | head -n 1)
  if [ -n "$dir" ] && [ -f "$dir/ckpt_epoch_240.pth" ]; then echo "$dir/ckpt_epoch_240.pth"
  elif [ -f "$TEACHERS/$1.pth" ]; then echo "$TEACHERS/$1.pth"; fi
}
for pair in $PAIRS; do
  teacher=${pair%%-*}
  file=$(published_teacher "$teacher")
  use=()
  if [ -n "$file" ]; then
    use=(--set "teacher.checkpoint=$file" --set "teacher.model=$teacher")
  else
    run "cifar100-teacher-$teacher" $C/base.yaml $C/teachers/$teacher.yaml
  fi
  for method in $METHODS; do
    run "cifar100-$pair-$method" $C/base.yaml $C/pairs/$pair.yaml $C/methods/$method.yaml ${use[@]+"${use[@]}"}
  done
done
echo "results: runs/cifar100-*/summary.json"
