#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
timeout 400 python experiments/results/benchmarks/speed_h200_2026-12-01d/persist_probe.py --out $OUT/persist.json > $OUT/persist.out 2>&1; echo "rc $?"
grep -E "BEST|current" $OUT/persist.out | cut -c1-400
