#!/usr/bin/env bash
# What is left of issue 36's measurements, in two lanes (one torch thread each) for a 2-core machine: the SFTN
# experiment (three teachers per seed, KD and FitNet students, 30 epochs), seeds 0-2 in one lane and 3-4 in the
# other, then its table over all five seeds. Every script keeps each finished run in benchmarks/results/ at once
# and skips what is kept, so this can be started again after any stop; commit benchmarks/results/ as runs finish.
# Logs: runs/queue-lane{1,2}.log.
# Everything below and the SFTN lanes have run (2026-12-08): on a machine with the committed results this trains
# nothing and rewrites the SFTN table. Kept as the record of how issue 36's runs were laid out over two cores.
# Already run (each command reuses its kept runs and only rewrites its table):
#   fashion_evidence.py --experiment pursuhint | netgraft | ddnn | rtk ; fashion_vit.py --teacher-epochs 20 ;
#   fashion_claims.py --claim rtk --methods afd rtk --seeds 3 4 5 6 7 8 9
#   bash benchmarks/evidence_queue.sh            # both lanes, in the background of this shell
#   LANE=1 bash benchmarks/evidence_queue.sh     # one lane in the foreground
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
mkdir -p runs
lane1() { $PY benchmarks/fashion_evidence.py --experiment sftn --seeds 3 4; }
lane2() { $PY benchmarks/fashion_evidence.py --experiment sftn --seeds 0 1 2; }
case "${LANE:-both}" in
  1) lane1 ;;
  2) lane2 ;;
  *) lane1 > runs/queue-lane1.log 2>&1 &
     lane2 > runs/queue-lane2.log 2>&1 &
     echo "lanes started: tail -f runs/queue-lane1.log runs/queue-lane2.log"; wait
     $PY benchmarks/fashion_evidence.py --experiment sftn --table-only ;;  # the table over seeds 0-4
esac
