#!/bin/bash
# Plan for the next session's first call (written in the twenty-second, which had no device time left for it):
# 100-step sampling at batch 512 with the committed rule (the Mosaic concat_dense at 16x16 only, 5043617 and on)
# against 3660d76 (the Triton kernel everywhere), alternating. Before it, from the repository root:
#   rm -rf .dev/old && mkdir -p .dev/old && git archive 3660d76 jdiff experiments configs | tar -x -C .dev/old \
#     && rm -rf .dev/old/experiments/results
# then run with carry [".whl", ".dev"]: bash experiments/results/benchmarks/speed_h200_2026-12-02c/call23a.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; date > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; limit=$3; shift 3; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout $limit python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; date >> $R/log.txt; }
S="--what sample --sample-steps 100 --repeats 3 --compare-images $R/images_old.npy"
run s_old_1 $ROOT/.dev/old 130 --variants bf16-auto $S --compilation-cache /tmp/cache_old
run s_new_1 $ROOT 150 --variants bf16-auto $S --compilation-cache /tmp/cache_new
run s_old_2 $ROOT/.dev/old 70 --variants bf16-auto $S --compilation-cache /tmp/cache_old
run s_new_2 $ROOT 70 --variants bf16-auto $S --compilation-cache /tmp/cache_new
run s_old_3 $ROOT/.dev/old 70 --variants bf16-auto $S --compilation-cache /tmp/cache_old
run s_new_3 $ROOT 70 --variants bf16-auto $S --compilation-cache /tmp/cache_new
rm -f $R/images_old.npy
cat $R/log.txt
