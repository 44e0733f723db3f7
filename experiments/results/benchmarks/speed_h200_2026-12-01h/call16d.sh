#!/bin/bash
# Sixteenth session, call D: a sampling-step profile (every kernel attributed: no command buffers) of the final
# code (b547097, the fused output head), 10 steps at batch 512; the summary only.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R
XLA_FLAGS=--xla_gpu_enable_command_buffer= PYTHONPATH=/tmp/site:. timeout 200 python experiments/profile_step.py --out $R/prof --what sample --sample-steps 10 > $R/prof.out 2>&1; echo "rc $?" >> $R/log.txt
cp $R/prof/sample.summary.json $OUT/profile_sample_b547097.summary.json
grep -i "output_head\|busy\|loop_select\|gemm_fusion" $R/prof.out | head -20 >> $R/log.txt
cp $R/log.txt $OUT/log.txt; tail -5 $R/prof.out; cat $OUT/log.txt
