#!/bin/bash
# Seventeenth session, call A: the small GroupNorms on Mosaic plans, the 4×4 convs as dense products (probe).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
P=experiments/results/benchmarks/speed_h200_2026-12-01i/probe_small.py
PYTHONPATH=/tmp/site:. timeout 120 python $P $OUT/probe_convs.json convs > $OUT/probe_convs.out 2>&1
echo "rc $?" >> $OUT/probe_convs.out
PYTHONPATH=/tmp/site:. timeout 400 python $P $OUT/probe_norms.json norms > $OUT/probe_norms.out 2>&1
echo "rc $?" >> $OUT/probe_norms.out
grep -v "^W1201\|^I1201" $OUT/probe_convs.out | tail -8
grep -v "^W1201\|^I1201" $OUT/probe_norms.out | cut -c1-220 | tail -70
