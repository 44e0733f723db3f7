#!/bin/bash
# Seventeenth session, call B: the sampler's model on two halves of the batch on two CUDA streams (probe).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt
P=experiments/results/benchmarks/speed_h200_2026-12-01i/probe_streams.py
XLA_FLAGS=--xla_gpu_experimental_stream_annotation=true PYTHONPATH=/tmp/site:. timeout 420 python $P \
  --out $OUT/probe_streams.json --variants plain,streams,halves > $OUT/probe_streams.out 2>&1
echo "rc $?" >> $OUT/probe_streams.out
grep -v "^W1201\|^I1201" $OUT/probe_streams.out | cut -c1-600 | tail -20
