#!/bin/bash
# Sixteenth session, call E: the fused output head with each image's products split between several programs
# (probe only; the device time left allowed no end-to-end run).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site:. timeout 150 python .dev/probe_splits.py $OUT/probe_splits.json > $OUT/probe_splits.out 2>&1
echo "rc $?" >> $OUT/probe_splits.out; grep -v "^W1201\|^I1201" $OUT/probe_splits.out | tail -12
