#!/bin/bash
# Eighteenth session, call A: the 8×8 and 4×4 GroupNorms, a sweep of the Triton kernel's settings and floors.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
P=experiments/results/benchmarks/speed_h200_2026-12-01j/probe_tiny.py
PYTHONPATH=/tmp/site:. timeout 480 python $P $OUT/probe_tiny.json > $OUT/probe_tiny.out 2>&1
echo "rc $?" >> $OUT/probe_tiny.out
grep -v "^W1201\|^I1201\|^E1201" $OUT/probe_tiny.out | grep -v "error" | sed 's/, .spread.*//' | cut -c1-150 | tail -150
