python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
mkdir -p /tmp/s
run() {  # name flags
  XLA_FLAGS="$2" python experiments/benchmark.py --out /tmp/s/sample_$1.json --what sample --sample-steps 100 --repeats 3 --variants bf16-auto 2>&1 | grep -E "^sample bf16" | sed "s/^/$1 /" | cut -c1-170 | tee -a $OUT/summary.txt
}
run base1 ""
run cublas "--xla_gpu_enable_triton_gemm=false"
run cublaslt "--xla_gpu_enable_cublaslt=true"
run exhaustive "--xla_gpu_exhaustive_tiling_search=true"
run base2 ""
run cublas2 "--xla_gpu_enable_triton_gemm=false"
run cublaslt2 "--xla_gpu_enable_cublaslt=true"
tar czf $OUT/samples.tgz -C /tmp/s .
python experiments/profile_step.py --out /tmp/prof --what sample --variant bf16-auto 2>&1 | tail -40 > $OUT/profile_sample.txt
cp /tmp/prof/sample.summary.json $OUT/profile_sample.summary.json; cp /tmp/prof/sample.trace.json.gz $OUT/profile_sample.trace.json.gz
ls -la $OUT
