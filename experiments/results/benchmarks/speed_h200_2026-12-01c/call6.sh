python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
root=$PWD
run() {  # which round
  d=$root; [ $1 = base ] && d=$root/.dev/base
  (cd $d && PYTHONPATH=/tmp/site:. python experiments/benchmark.py --out $OUT/sample_$1_$2.json --what sample --sample-steps 100 --repeats 3 --variants bf16-auto 2>&1 | grep -E "^sample bf16" | sed "s/^/$1 $2 /" | cut -c1-170 | tee -a $OUT/summary.txt)
}
run base 1; run new 1; run base 2; run new 2
