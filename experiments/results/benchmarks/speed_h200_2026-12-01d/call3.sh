#!/bin/bash
# Twelfth session, call 3: whole-loop command buffers confirmed (alternating), autotuning options against the
# per-conv memsets, and the train step with convolutions in command buffers.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
R=$OUT/r; mkdir -p $R
B="python experiments/benchmark.py --what sample --sample-steps 100 --repeats 3 --variants bf16-auto"
T="python experiments/benchmark.py --what train --steps 20 --repeats 5 --variants bf16-auto"
CB=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN
ALL=$CB,CONVOLUTION,WHILE,CONDITIONAL
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4)) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; shift; echo "== $name $XLA_FLAGS" >> $R/log.txt; timeout 170 "$@" --out $R/$name.json > $R/$name.out 2>&1; echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
XLA_FLAGS= run s_default_3 $B
XLA_FLAGS=--xla_gpu_enable_command_buffer=$ALL run s_all_cb_2 $B
XLA_FLAGS= run s_default_4 $B
XLA_FLAGS=--xla_gpu_enable_command_buffer=$ALL run s_all_cb_3 $B
XLA_FLAGS=--xla_gpu_autotune_level=0 run s_autotune0 $B
XLA_FLAGS=--xla_gpu_exclude_nondeterministic_ops=true run s_exclude_nondet $B
XLA_FLAGS= run t_default_1 $T
XLA_FLAGS=--xla_gpu_enable_command_buffer=$CB,CONVOLUTION run t_conv_cb_1 $T
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt && cat log.txt
