#!/bin/bash
# Plan for the next session's first call (written in the twentieth session, which had no device time):
# 100-step sampling at batch 512 of the committed code (concat_dense BLOCK_N = 256, never timed end to end)
# alternating with b9d9302 in .dev/old (make it with:
#   rm -rf .dev/old && mkdir -p .dev/old && git archive b9d9302 jdiff experiments configs | tar -x -C .dev/old
#   && rm -rf .dev/old/experiments/results),
# then a 10-step sampling profile of the committed code, to see whether the 16x16 and 8x8 decoder blocks'
# attention residual adds became passes of their own (lever 2 of the note).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; echo start > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; limit=$3; shift 3; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout $limit python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
S="--what sample --sample-steps 100 --repeats 3 --compare-images $R/images_new.npy"
run s_new_1 $ROOT 130 --variants bf16-auto $S --compilation-cache /tmp/cache_new
run s_old_1 $ROOT/.dev/old 130 --variants bf16-auto $S --compilation-cache /tmp/cache_old
run s_new_2 $ROOT 70 --variants bf16-auto $S --compilation-cache /tmp/cache_new
run s_old_2 $ROOT/.dev/old 70 --variants bf16-auto $S --compilation-cache /tmp/cache_old
rm -f $R/images_new.npy
echo "== profile" >> $R/log.txt
(XLA_FLAGS=--xla_gpu_enable_command_buffer= PYTHONPATH=/tmp/site:. timeout 150 python experiments/profile_step.py --out $R/profile --what sample --sample-steps 10 > $R/profile.out 2>&1); echo "rc $?" >> $R/log.txt
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt; rm -rf r; cat log.txt
