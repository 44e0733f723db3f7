#!/bin/bash
# Fifteenth session, call E: the final code (parts only at levels without attention, the attention residual as
# before) against 1999194 (.dev/old): 100-step sampling at batch 512, one run each.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; echo start > $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; shift 2; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout 100 python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
S="--what sample --sample-steps 100 --repeats 3 --compare-images $R/images_new.npy"
run s_new $ROOT --variants bf16-auto $S
run s_old $ROOT/.dev/old --variants bf16-auto $S
rm -f $R/images_new.npy
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt; rm -rf r; cat log.txt
