#!/usr/bin/env bash
# NetGraft on CIFAR-10 or CIFAR-100 with the paper's schedule (Shen et al., AAAI 2021; docs/netgraft.md):
# VGG16 without BN -> its thinner student (blocks 1-3 shared), n = 1, 5, 10 images per class, 3 seeds,
# against KD on the same n-shot images and KD on the full training set. Needs a GPU and the official
# cifar-10-batches-py/ or cifar-100-python/ under DATA (default ./data). Give a trained teacher with
# TEACHER=runs/... or let the recipe train vgg16_nobn first (240 epochs). Resumable: run it again.
#   DATASET=cifar100 DATA=/data SEEDS="0 1 2" bash benchmarks/netgraft_cifar.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-cifar10}
DATA=${DATA:-data}
SEEDS=${SEEDS:-"0 1 2"}
SHOTS=${SHOTS:-"1 5 10"}
EXTRA=${EXTRA:-}
teacher=()
if [ -n "${TEACHER:-}" ]; then teacher=(--teacher "$TEACHER"); fi
kdforge netgraft "configs/$DATASET/netgraft/base.yaml" --schedule "$DATASET" --shots $SHOTS --seeds $SEEDS \
  --set data.root="$DATA" --out "runs/$DATASET-netgraft" "${teacher[@]}" $EXTRA
echo "results: runs/$DATASET-netgraft/results.md"
