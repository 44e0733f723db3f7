#!/bin/bash
# Twelfth session, call 1: command-buffer / conv-fusion XLA options for 100-step sampling (A/B), and
# profile_step's recording of the sampler with its HLO, every kernel attributed.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > $R/gpu.txt
B="python experiments/benchmark.py --what sample --sample-steps 100 --repeats 3 --variants bf16-auto"
CB=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN
run() { name=$1; shift; echo "== $name $XLA_FLAGS" >> $R/log.txt; timeout 150 "$@" --out $R/$name.json > $R/$name.out 2>&1; echo "rc $?" >> $R/log.txt; python -c "import json; d=json.load(open('$R/$name.json')); [print(k, round(v['images_per_sec'], 2), round(v['seconds_per_batch'], 4), v.get('compile_seconds')) for k, v in d['sample'].items()]" >> $R/log.txt 2>&1; tail -3 $R/$name.out | cut -c1-300 >> $R/log.txt; }
XLA_FLAGS= run default_1 $B
XLA_FLAGS=--xla_gpu_enable_command_buffer=$CB,CONVOLUTION run conv_cb_1 $B
XLA_FLAGS=--xla_gpu_enable_command_buffer=$CB,CONVOLUTION,WHILE,CONDITIONAL run all_cb_1 $B
XLA_FLAGS= run default_2 $B
XLA_FLAGS=--xla_gpu_enable_command_buffer=$CB,CONVOLUTION run conv_cb_2 $B
XLA_FLAGS=--xla_gpu_experimental_enable_conv_fusion=true run conv_fusion_1 $B
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 170 python experiments/profile_step.py --out $R/prof --what sample --variant bf16-auto > $R/profile.out 2>&1; echo "profile rc $?" >> $R/log.txt
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt && cat log.txt
