#!/bin/bash
# Twenty-first session, call C (the last ~290 s of device time): jax's Hopper matmul in Pallas Mosaic GPU
# against XLA's product at the UNet's 1x1 product shapes, with and without a residual epilogue.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; date > $R/log.txt
(PYTHONPATH=/tmp/site:. timeout 150 python experiments/results/benchmarks/speed_h200_2026-12-02b/probe_mgpu_matmul.py $R/probe_mgpu_matmul.json > $R/probe.out 2>&1); echo "rc $?" >> $R/log.txt
grep "^{" $R/probe.out >> $R/log.txt; tail -3 $R/probe.out >> $R/log.txt; date >> $R/log.txt
cd $OUT && cp r/* . && rm -rf r; cat log.txt
