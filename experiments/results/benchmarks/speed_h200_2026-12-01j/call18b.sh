#!/bin/bash
# Eighteenth session, call B: the grouped-tile GroupNorm forward (probe) against the library's Triton kernel.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
P=experiments/results/benchmarks/speed_h200_2026-12-01j/probe_grouped.py
PYTHONPATH=/tmp/site:. timeout 450 python $P $OUT/probe_grouped.json "16,256;64,256;16,512;64,512;256,256;256,512" > $OUT/probe_grouped.out 2>&1
echo "rc $?" >> $OUT/probe_grouped.out
grep -v "^W1201\|^I1201\|^E1201" $OUT/probe_grouped.out | sed 's/, .spread.*//' | cut -c1-160 | tail -80
