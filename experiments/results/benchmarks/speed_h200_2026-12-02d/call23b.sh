#!/bin/bash
# Twenty-third session, call B: the Mosaic GroupNorm forward's plans at the UNet's 32×32 shapes (probe_gn_plans.py),
# then, if a plan rule beats the default by the probe (norms weighted by their count in one network evaluation),
# 100-step sampling with that rule against the code before, alternating. Prepared from the repository root:
#   rm -rf .dev/old .dev/newA && mkdir -p .dev/old && git archive HEAD jdiff experiments configs | tar -x -C .dev/old
#   && rm -rf .dev/old/experiments/results && cp -r .dev/old .dev/newA
#   && sed 's/^MAX_CTAS_PER_SM = 3/MAX_CTAS_PER_SM = 2/' jdiff/models/mosaic_group_norm.py > .dev/newA/jdiff/models/mosaic_group_norm.py
# (rule B = the working tree: up to 3 CTAs per SM; rule A = .dev/newA: up to 2), run with carry [".whl", ".dev"].
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; D=experiments/results/benchmarks/speed_h200_2026-12-02d; date > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
PYTHONPATH=/tmp/site:. timeout 220 python $D/probe_gn_plans.py $R/probe_gn_plans.json > $R/probe.out 2>&1
echo "probe rc $?" >> $R/log.txt; date >> $R/log.txt
RULE=$(python - $R/probe_gn_plans.json 2>&1 >> $R/log.txt <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
weights = {(128, False): 7, (128, True): 4, ((128, 128), True): 3, (256, False): 1, (384, True): 1}
def key(r):
    return (r["parts"][0] if len(r["parts"]) == 1 else tuple(r["parts"]), r["shared"])
us = {(key(r), r["chunk_rows"], r["ring"], r["ctas_per_sm"]): r["us"] for r in rows
      if r["name"] == "mosaic" and "us" in r and r.get("max_diff", 0) == 0}
rules = {"default": {32: (256, 6, 2), 48: (256, 8, 1)}, "A": {32: (256, 6, 2), 48: (128, 9, 2)},
         "B": {32: (128, 9, 3), 48: (128, 9, 2)}}
totals = {}
for name, rule in rules.items():
    try:
        totals[name] = sum(w * us[(k, *rule[48 if k == (384, True) else 32])] for k, w in weights.items())
    except KeyError as e:
        print(f"rule {name}: no valid time for {e}")
print("weighted us per network evaluation:", {k: round(v, 1) for k, v in totals.items()})
best = min(totals, key=totals.get) if "default" in totals else "default"
print("chosen:", best)
sys.stderr.write(best)
PY
)
echo "rule $RULE" >> $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; limit=$3; shift 3; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout $limit python experiments/benchmark.py "$@" --out /tmp/$name.json > /tmp/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show /tmp/$name.json >> $R/log.txt 2>&1; tail -3 /tmp/$name.out | grep -i error >> $R/log.txt; date >> $R/log.txt; }
if [ "$RULE" = "A" ] || [ "$RULE" = "B" ]; then
  NEW=$ROOT; [ "$RULE" = "A" ] && NEW=$ROOT/.dev/newA
  S="--what sample --sample-steps 100 --repeats 3 --compare-images /tmp/images_old.npy"
  run s_old_1 $ROOT/.dev/old 130 --variants bf16-auto $S --compilation-cache /tmp/cache_old
  run s_new_1 $NEW 150 --variants bf16-auto $S --compilation-cache /tmp/cache_new
  run s_old_2 $ROOT/.dev/old 70 --variants bf16-auto $S --compilation-cache /tmp/cache_old
  run s_new_2 $NEW 70 --variants bf16-auto $S --compilation-cache /tmp/cache_new
fi
cat $R/log.txt
