#!/bin/bash
# Fourteenth session, call A: 100-step sampling at batch 512 with the Mosaic attention kernel (new, the
# repository root) against 2e28491 (old, .dev/old), alternating; the first new run also samples with cuDNN's
# attention everywhere (bf16-cudnn) in the same process, for the images' difference.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), v.get('images_max_abs_diff_to_first', ''), v.get('images_mean_abs_diff_to_first', '')) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; shift 2; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout 200 python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
S="--what sample --sample-steps 100 --repeats 3"
run s_new_1 $ROOT --variants bf16-auto,bf16-cudnn $S
run s_old_1 $ROOT/.dev/old --variants bf16-auto $S
run s_new_2 $ROOT --variants bf16-auto $S
run s_old_2 $ROOT/.dev/old --variants bf16-auto $S
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt && cat log.txt
