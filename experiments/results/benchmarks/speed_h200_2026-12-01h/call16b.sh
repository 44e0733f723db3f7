#!/bin/bash
# Sixteenth session, call B: the fused output head (probe), then 100-step sampling at batch 512 alternating
# with 13430da (.dev/old), if the probe found the fused head faster.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; echo start > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
PYTHONPATH=/tmp/site:. timeout 200 python .dev/probe_head.py $R/probe_head.json > $R/probe_head.out 2>&1
echo "probe rc $?" >> $R/log.txt
python - $R/probe_head.json >> $R/log.txt 2>&1 <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]: print(r)
print(d.get("unfused_vs_highest"))
PY
faster=$(python -c "import json,sys; r=json.load(open(sys.argv[1]))['rows']; print(int(min(x['us'] for x in r if x['name'].startswith('fused')) < r[0]['us']))" $R/probe_head.json 2>/dev/null)
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; shift 2; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout 110 python experiments/benchmark.py "$@" --out $R/$name.json > $R/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show $R/$name.json >> $R/log.txt 2>&1; }
S="--what sample --sample-steps 100 --repeats 3 --compare-images $R/images_new.npy"
if [ "$faster" = "1" ]; then
  run s_new_1 $ROOT --variants bf16-auto $S
  run s_old_1 $ROOT/.dev/old --variants bf16-auto $S
  run s_new_2 $ROOT --variants bf16-auto $S
  run s_old_2 $ROOT/.dev/old --variants bf16-auto $S
fi
rm -f $R/images_new.npy
cd $OUT && tar czf results.tgz r && cp r/log.txt log.txt; rm -rf r; cat log.txt
