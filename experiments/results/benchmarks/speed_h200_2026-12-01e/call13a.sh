#!/bin/bash
# Thirteenth session, call A: the Mosaic GroupNorm forward checked and timed against the Triton kernel, then
# 100-step sampling with it (new, from the repository root) against 52b03ed (old, .dev/old), alternating.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD
PYTHONPATH=/tmp/site:. OUT=$R timeout 150 python .dev/check_mosaic.py > $R/check.out 2>&1; echo "check rc $?" >> $R/log.txt
grep "^{" $R/check.out >> $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), v.get('spread', '')) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; shift 2; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout 160 python experiments/benchmark.py --variants bf16-auto "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
S="--what sample --sample-steps 100 --repeats 3"
run s_new_1 $ROOT $S
run s_old_1 $ROOT/.dev/old $S
run s_new_2 $ROOT $S
run s_old_2 $ROOT/.dev/old $S
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt && cat log.txt
