#!/bin/bash
# Thirteenth session, call B: the bf16 train step at batch 128 with the Mosaic GroupNorm forward
# (new, from the repository root) against 52b03ed (old, .dev/old), alternating.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), v.get('spread', '')) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; shift 2; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout 160 python experiments/benchmark.py --variants bf16-auto "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
T="--what train --steps 20 --repeats 5"
run t_new_1 $ROOT $T
run t_old_1 $ROOT/.dev/old $T
run t_new_2 $ROOT $T
run t_old_2 $ROOT/.dev/old $T
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt && cat log.txt
