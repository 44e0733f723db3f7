#!/bin/bash
# Seventeenth session, call C: the output head with its statistics in a kernel of their own (probe).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
P=experiments/results/benchmarks/speed_h200_2026-12-01i/probe_head_split.py
PYTHONPATH=/tmp/site:. timeout 240 python $P $OUT/probe_head_split.json > $OUT/probe_head_split.out 2>&1
echo "rc $?" >> $OUT/probe_head_split.out
grep -v "^W1201\|^I1201" $OUT/probe_head_split.out | cut -c1-300 | tail -20
