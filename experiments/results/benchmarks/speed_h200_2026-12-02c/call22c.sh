#!/bin/bash
# Twenty-second session, call C (the last device minutes): probe_small.py on .dev/mosaic (the fixed kernel).
R=$OUT/r; mkdir -p $R; date > $R/log.txt
(cd .dev/mosaic && PYTHONPATH=. timeout 190 python ../../experiments/results/benchmarks/speed_h200_2026-12-02c/probe_small.py $R/probe_small.jsonl > $R/probe_small.out 2>&1); echo "rc $?" >> $R/log.txt
cat $R/probe_small.jsonl >> $R/log.txt; date >> $R/log.txt; cat $R/log.txt
