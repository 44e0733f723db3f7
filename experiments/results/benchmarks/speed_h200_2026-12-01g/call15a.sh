#!/bin/bash
# Fifteenth session, call A: the pieces of the concatenation-free decoder (probe_parts.py), then 100-step
# sampling at batch 512 of the new code (the repository root) against 1999194 (.dev/old, with the new
# benchmark.py for --compare-images), alternating; the samples of every run compared with the first new run's.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm,power.limit,temperature.gpu --format=csv > $R/gpu.txt 2>&1
(PYTHONPATH=/tmp/site:. OUT=$R timeout 170 python experiments/results/benchmarks/speed_h200_2026-12-01g/probe_parts.py > $R/probe_parts.out 2>&1); echo "probe rc $?" > $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; shift 2; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout 200 python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
S="--what sample --sample-steps 100 --repeats 3 --compare-images $R/images_new_1.npy"
run s_new_1 $ROOT --variants bf16-auto $S
run s_old_1 $ROOT/.dev/old --variants bf16-auto $S
run s_new_2 $ROOT --variants bf16-auto $S
run s_old_2 $ROOT/.dev/old --variants bf16-auto $S
rm -f $R/images_new_1.npy
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt && cp r/probe_parts.json probe_parts.json 2>/dev/null; rm -rf r; cat log.txt; cat probe_parts.json
