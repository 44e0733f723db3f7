#!/bin/bash
# Twenty-second session, call B: the Mosaic GPU concat_dense with wgmma_wait(1) in its pipeline body; first its
# compile and run times alone at the 16x16 decoder shape (call A's probe stopped there), then 100-step sampling at
# batch 512 with ConcatConv1x1 on it (.dev/mosaic) against HEAD, alternating. Run from the repository root.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; date > $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; limit=$3; shift 3; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout $limit python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; date >> $R/log.txt; }
echo "== diag 256 256 256" >> $R/log.txt
(cd .dev/mosaic && PYTHONPATH=/tmp/site:. timeout 50 python $ROOT/experiments/results/benchmarks/speed_h200_2026-12-02c/diag_compile.py 256 256 256 > $R/diag.out 2>&1); echo "rc $?" >> $R/log.txt
grep -v "^E1\|^W1\|^I1" $R/diag.out | tail -12 >> $R/log.txt; date >> $R/log.txt
S="--what sample --sample-steps 100 --repeats 3 --compare-images $R/images_head.npy"
run s_head_1 $ROOT 110 --variants bf16-auto $S --compilation-cache /tmp/cache_head
run s_mosaic_1 $ROOT/.dev/mosaic 170 --variants bf16-auto $S --compilation-cache /tmp/cache_mosaic
run s_head_2 $ROOT 65 --variants bf16-auto $S --compilation-cache /tmp/cache_head
run s_mosaic_2 $ROOT/.dev/mosaic 65 --variants bf16-auto $S --compilation-cache /tmp/cache_mosaic
rm -f $R/images_head.npy
cat $R/log.txt
