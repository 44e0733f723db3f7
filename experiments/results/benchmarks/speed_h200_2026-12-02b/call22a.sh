#!/bin/bash
# Plan for the next session's first call (written in the twenty-first, which had no device time left for it):
# the Mosaic GPU prototype of concat_dense (concat_dense_mgpu.py) against XLA and jdiff's Triton kernel at
# the decoder's four shapes. Run from the repository root as: bash experiments/results/benchmarks/speed_h200_2026-12-02b/call22a.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; date > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
(PYTHONPATH=/tmp/site:. timeout 300 python experiments/results/benchmarks/speed_h200_2026-12-02b/probe_mgpu_concat_dense.py $R/probe_mgpu_concat_dense.json > $R/probe.out 2>&1); echo "rc $?" >> $R/log.txt
grep "^{" $R/probe.out >> $R/log.txt; tail -3 $R/probe.out >> $R/log.txt; date >> $R/log.txt
cd $OUT && cp r/* . && rm -rf r; cat log.txt
