#!/bin/bash
# Plan for a next session's call (written in the twenty-third): the library's 16x16 Mosaic attention under other
# settings of its module constants (probe_attn_settings.py: key blocks of 32 and 128, 3 stages, another register
# split), one row per process with a 45 s limit each (a register split that does not fit hangs the GPU).
# Run from the repository root with carry [".whl"]: bash experiments/results/benchmarks/speed_h200_2026-12-02d/call24b.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; D=experiments/results/benchmarks/speed_h200_2026-12-02d; date > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
START=$SECONDS
for i in 0 1 2 3 4 5; do
  PYTHONPATH=/tmp/site:. timeout 45 python $D/probe_attn_settings.py $R/probe_attn_settings.json --only $i \
    2>&1 | grep -v "^WARNING" | tail -2 >> $R/probe.out
  echo "row $i rc ${PIPESTATUS[0]} at $((SECONDS - START)) s" >> $R/log.txt
done
rm -f $R/probe_attn_settings.json.default.npy
cat $R/log.txt $R/probe.out
