#!/bin/bash
# Seventeenth session, call D: the 1×1 skip convs on a second CUDA stream (probe), without and with XLA's
# latency-hiding scheduler.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
P=experiments/results/benchmarks/speed_h200_2026-12-01i/probe_skip_stream.py
XLA_FLAGS=--xla_gpu_experimental_stream_annotation=true PYTHONPATH=/tmp/site:. timeout 200 python $P \
  --out $OUT/probe_skip_stream.json > $OUT/probe_skip_stream.out 2>&1
echo "rc $?" >> $OUT/probe_skip_stream.out
XLA_FLAGS="--xla_gpu_experimental_stream_annotation=true --xla_gpu_enable_latency_hiding_scheduler=true" \
  PYTHONPATH=/tmp/site:. timeout 200 python $P --out $OUT/probe_skip_stream_lhs.json \
  > $OUT/probe_skip_stream_lhs.out 2>&1
echo "rc $?" >> $OUT/probe_skip_stream_lhs.out
for f in $OUT/probe_skip_stream.out $OUT/probe_skip_stream_lhs.out; do
  grep -v "^W1201\|^I1201" $f | cut -c1-700 | tail -6; done
