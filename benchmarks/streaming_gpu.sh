#!/usr/bin/env bash
# The streaming loader against a resnet18_imagenet step on a lent GPU machine, as one short script
# (`run` tool: `bash benchmarks/streaming_gpu.sh`, timeout ~400 s). It needs only the repository and a
# CUDA torch there. It writes $OUT/streaming_gpu.json and .log; copy the table into benchmarks/RESULTS.md
# with the machine's name (nvidia-smi, lscpu are printed first).
#   2,048 generated JPEGs, batch 256, workers 0 4 8 12 per process (one process: one GPU).
set -euo pipefail
OUT=${OUT:-benchmarks/results/streaming}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; lscpu | grep -E "Model name|^CPU\(s\)"; } \
    | tee "$OUT/streaming_gpu.log"
python benchmarks/streaming.py --device cuda --batch 256 --images 2048 --workers 0 4 8 12 --steps 20 \
    --fed-batches 6 --root /tmp/kdforge-streaming-bench --out "$OUT/streaming_gpu.json" | tee -a "$OUT/streaming_gpu.log"
