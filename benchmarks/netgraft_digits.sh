#!/usr/bin/env bash
# NetGraft vs KD on the same n-shot images vs KD on the full training set, on the built-in digits
# (quarter-width VGG16 without BN -> its thinner student, blocks 1-3 shared), n = 1, 5, 10, 3 seeds,
# the paper's CIFAR-10 schedule (stage 1: 100/60/60 epochs, stage 2: 100/100; f = n/10 scaling).
# Resumable: run it again after an interruption. Results: $OUT/results.md
set -euo pipefail
OUT=${OUT:-runs/bench/netgraft_digits}
KDFORGE=${KDFORGE:-python -m kdforge}
$KDFORGE netgraft --width 0.25 --shots 1 5 10 --seeds 0 1 2 --select last --out "$OUT" --no-progress \
    --set train.tensorboard=false "$@"
