#!/bin/bash
# Sixteenth session, call A: the UNet forward at batch 64..512 and batch 512 in 2/4/8 ordered chunks.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt
PYTHONPATH=/tmp/site:. timeout 400 python .dev/probe_chunks.py --out $R/probe_chunks.json > $R/probe_chunks.out 2>&1
echo "rc $?" >> $R/probe_chunks.out
cd $OUT && tar czf results.tgz r && tail -20 r/probe_chunks.out; rm -rf r
