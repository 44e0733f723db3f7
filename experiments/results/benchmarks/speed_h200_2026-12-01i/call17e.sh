#!/bin/bash
# Seventeenth session, call E: call D's skip-stream variant first (it did not compile within call D's limits),
# then the plain model, in one process with a longer limit.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
P=experiments/results/benchmarks/speed_h200_2026-12-01i/probe_skip_stream.py
XLA_FLAGS=--xla_gpu_experimental_stream_annotation=true PYTHONPATH=/tmp/site:. timeout 390 python $P \
  --out $OUT/probe_skip_stream.json --variants skip-stream,plain > $OUT/probe_skip_stream.out 2>&1
echo "rc $?" >> $OUT/probe_skip_stream.out
grep -v "^W1201\|^I1201" $OUT/probe_skip_stream.out | cut -c1-700 | tail -8
