#!/bin/bash
# Plan for the next session's first call (written in the twenty-third, whose device time was spent): 100-step
# sampling at batch 512 of the library's online-softmax attention (e222376 on; timed only as the prototype, in
# call D) alternating with d1d6885 (the kernel before) in .dev/old, then a 10-step sampling profile of the new
# code, which re-attributes the step's time after this session's change. Prepare from the repository root:
#   rm -rf .dev/old && mkdir -p .dev/old && git archive d1d6885 jdiff experiments configs | tar -x -C .dev/old
#     && rm -rf .dev/old/experiments/results
# and run with carry [".whl", ".dev"]: bash experiments/results/benchmarks/speed_h200_2026-12-02d/call24a.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; date > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; limit=$3; shift 3; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout $limit python experiments/benchmark.py "$@" --out /tmp/$name.json > /tmp/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show /tmp/$name.json >> $R/log.txt 2>&1; grep -i "error" /tmp/$name.out | tail -2 >> $R/log.txt; date >> $R/log.txt; }
S="--what sample --sample-steps 100 --repeats 3 --compare-images /tmp/images_old.npy"
run s_old_1 $ROOT/.dev/old 120 --variants bf16-auto $S --compilation-cache /tmp/cache_old
run s_new_1 $ROOT 130 --variants bf16-auto $S --compilation-cache /tmp/cache_new
run s_old_2 $ROOT/.dev/old 65 --variants bf16-auto $S --compilation-cache /tmp/cache_old
run s_new_2 $ROOT 65 --variants bf16-auto $S --compilation-cache /tmp/cache_new
echo "== profile" >> $R/log.txt
(XLA_FLAGS=--xla_gpu_enable_command_buffer= PYTHONPATH=/tmp/site:. timeout 150 python experiments/profile_step.py --out /tmp/profile --what sample --sample-steps 10 > $R/profile.out 2>&1); echo "rc $?" >> $R/log.txt
cp /tmp/profile/sample.summary.json $R/ 2>> $R/log.txt
cat $R/log.txt
