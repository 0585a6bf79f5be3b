#!/usr/bin/env bash
# The rest of issue 36's and 37's measurements, in two lanes (one torch thread each) for a 2-core machine.
# Every script keeps each finished run in benchmarks/results/ at once and skips what is kept, so this can be
# started again after any stop; commit benchmarks/results/ as runs finish. Logs: runs/queue-lane{1,2}.log.
#   bash benchmarks/evidence_queue.sh            # both lanes, in the background of this shell
#   LANE=1 bash benchmarks/evidence_queue.sh     # one lane in the foreground
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
mkdir -p runs
lane1() {  # claims whose runs are cheapest first
  $PY benchmarks/fashion_evidence.py --experiment pursuhint
  $PY benchmarks/fashion_evidence.py --experiment netgraft
  $PY benchmarks/fashion_evidence.py --experiment ddnn
}
lane2() {  # ViT (issue 37) first: its last two seeds are short
  $PY benchmarks/fashion_vit.py --teacher-epochs 20
  $PY benchmarks/fashion_claims.py --claim rtk --methods afd rtk --seeds 3 4 5 6 7 8 9
  $PY benchmarks/fashion_evidence.py --experiment rtk
  $PY benchmarks/fashion_evidence.py --experiment sftn
}
case "${LANE:-both}" in
  1) lane1 ;;
  2) lane2 ;;
  *) lane1 > runs/queue-lane1.log 2>&1 &
     lane2 > runs/queue-lane2.log 2>&1 &
     echo "lanes started: tail -f runs/queue-lane1.log runs/queue-lane2.log"; wait ;;
esac
