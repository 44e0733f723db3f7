#!/bin/bash
# Twenty-first session, call B: the attention output projection with its residual in concat_dense at 16x16 only, block_n 128 (the
# committed code) against 83ea712 in .dev/old (git archive), 100-step sampling at batch 512, alternating;
# first the per-call probe of the projection + residual at 16x16, 8x8, 4x4.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; echo start > $R/log.txt; date >> $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; limit=$3; shift 3; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout $limit python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; date >> $R/log.txt; }
echo "== probe" >> $R/log.txt
(PYTHONPATH=/tmp/site:. timeout 90 python experiments/results/benchmarks/speed_h200_2026-12-02b/probe_residual.py $R/probe_residual.json B > $R/probe.out 2>&1); echo "rc $?" >> $R/log.txt
grep "^{" $R/probe.out >> $R/log.txt; date >> $R/log.txt
S="--what sample --sample-steps 100 --repeats 3 --compare-images $R/images_new.npy"
run s_new_1 $ROOT 130 --variants bf16-auto $S --compilation-cache /tmp/cache_new
run s_old_1 $ROOT/.dev/old 130 --variants bf16-auto $S --compilation-cache /tmp/cache_old
run s_new_2 $ROOT 70 --variants bf16-auto $S --compilation-cache /tmp/cache_new
run s_old_2 $ROOT/.dev/old 70 --variants bf16-auto $S --compilation-cache /tmp/cache_old
rm -f $R/images_new.npy
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt; rm -rf r; cat log.txt
