#!/bin/bash
# Eighteenth session, call D: more settings of the grouped-tile forward at 16×16 (probe_grouped.py, SWEEP_16).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
P=experiments/results/benchmarks/speed_h200_2026-12-01j/probe_grouped.py
PYTHONPATH=/tmp/site:. timeout 170 python $P $OUT/probe_grouped16.json "256,256;256,512" 16 > $OUT/probe_grouped16.out 2>&1
echo "rc $?" >> $OUT/probe_grouped16.out
grep -v "^W1201\|^I1201\|^E1201" $OUT/probe_grouped16.out | sed 's/, .spread.*//' | cut -c1-160 | tail -40
