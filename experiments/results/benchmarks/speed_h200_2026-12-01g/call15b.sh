#!/bin/bash
# Fifteenth session, call B: sampling-step profiles (every kernel attributed: no command buffers) of the new
# code (repository root) and of 1999194 (.dev/old), 10 steps at batch 512.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD
for v in new old; do
  dir=$ROOT; [ $v = old ] && dir=$ROOT/.dev/old
  (cd $dir && XLA_FLAGS=--xla_gpu_enable_command_buffer= PYTHONPATH=/tmp/site:. timeout 240 python experiments/profile_step.py --out $R/prof_$v --what sample --sample-steps 10 > $R/prof_$v.out 2>&1); echo "$v rc $?" >> $R/log.txt
done
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt; rm -rf r; cat log.txt
