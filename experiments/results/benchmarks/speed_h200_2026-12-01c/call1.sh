set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv
python experiments/bench_group_norm.py --out $OUT/gn_forward_prefetch.json --shapes 5 --block-n 16,32,64,128 --widths 32,64,128 --min-tile 2048 --max-tile 8192 --num-warps 4,8 --prefetch 0,1 --repeats 5 2>&1 | grep -v -i warning | tail -8 > $OUT/gn_forward_table.txt
cat $OUT/gn_forward_table.txt
run() {  # prefetch round
  PREFETCH=$1 python .dev/with_prefetch.py experiments/benchmark.py --out $OUT/sample_pf$1_$2.json --what sample --sample-steps 100 --repeats 3 --variants bf16-auto 2>&1 | grep -E "^sample bf16" | sed "s/^/pf$1 $2 /" | cut -c1-200 | tee -a $OUT/summary.txt
}
run 0 1; run 1 1; run 0 2; run 1 2
