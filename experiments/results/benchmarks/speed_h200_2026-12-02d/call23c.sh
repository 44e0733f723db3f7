#!/bin/bash
# Twenty-third session, call C: the prototype attention kernel (mgpu_attn_online.py) against the library's at the
# UNet's 16x16 shape (probe_attn_online.py). Run from the repository root with carry [".whl", ".dev"].
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; D=experiments/results/benchmarks/speed_h200_2026-12-02d; date > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
PYTHONPATH=/tmp/site:. timeout 300 python $D/probe_attn_online.py $R/probe_attn_online.json > $R/probe.out 2>&1
echo "probe rc $?" >> $R/log.txt; date >> $R/log.txt
cat $R/log.txt; grep -v "^WARNING" $R/probe.out | tail -20
