#!/bin/bash
# Fifteenth session, call D: which residual form XLA folds into the GEMM (probe_residual.py), then 100-step
# sampling at batch 512 of the new code (the residual added before the projection's bias) against 1999194
# (.dev/old), alternating.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD
(PYTHONPATH=/tmp/site:. OUT=$R timeout 80 python experiments/results/benchmarks/speed_h200_2026-12-01g/probe_residual.py > $R/probe_residual.out 2>&1); echo "probe rc $?" > $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; shift 2; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout 120 python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
S="--what sample --sample-steps 100 --repeats 3 --compare-images $R/images_old_1.npy"
run s_old_1 $ROOT/.dev/old --variants bf16-auto $S
export XLA_FLAGS="--xla_dump_to=$R/dump --xla_dump_hlo_module_re=.*generate.*"; run s_new_1 $ROOT --variants bf16-auto $S; unset XLA_FLAGS
f=$(ls $R/dump/*generate*after_optimizations.txt 2>/dev/null | head -1)
echo "hlo: wrapped_add $(grep -c 'wrapped_add[.0-9]* = ' $f) loop_add_fusion $(grep -c 'loop_add_fusion[.0-9]* = ' $f) beta1 $(grep -c '\"beta\":1' $f)" >> $R/log.txt
gzip -c $f > $R/sample_new.hlo.txt.gz 2>/dev/null; rm -rf $R/dump
run s_old_2 $ROOT/.dev/old --variants bf16-auto $S
run s_new_2 $ROOT --variants bf16-auto $S
rm -f $R/images_old_1.npy
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt; cp r/probe_residual.json . 2>/dev/null; rm -rf r; cat log.txt; cat probe_residual.json
