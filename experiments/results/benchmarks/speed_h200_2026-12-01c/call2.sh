python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
python .dev/probe_attn256.py $OUT/probe_attn256.json 2>&1 | grep -v -i warning | tee $OUT/probe_attn256.txt
run() {  # max round
  ATTN_MAX=$1 ATTN_PROBE=$OUT/probe_attn256.json python .dev/with_attn.py experiments/benchmark.py --out $OUT/sample_attn$1_$2.json --what sample --sample-steps 100 --repeats 3 --variants bf16-auto 2>&1 | grep -E "^(sample bf16|attention kernel)" | sed "s/^/attn$1 $2 /" | cut -c1-200 | tee -a $OUT/summary.txt
}
run 64 1; run 256 1; run 64 2; run 256 2
