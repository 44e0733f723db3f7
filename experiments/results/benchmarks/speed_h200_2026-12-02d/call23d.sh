#!/bin/bash
# Twenty-third session, call D: probe_attn_online.py again, one row per process (call C's single process spent
# its limit on a NumPy reference, then on the first variant), then, if a variant is >= 5% faster than the
# library kernel with its output within 0.0625 of it, 100-step sampling with that variant in the UNet against
# the code before, alternating. Prepared from the repository root:
#   rm -rf .dev/old .dev/new && mkdir -p .dev/old && git archive HEAD jdiff experiments configs | tar -x -C .dev/old
#   && rm -rf .dev/old/experiments/results && cp -r .dev/old .dev/new
#   && cp experiments/results/benchmarks/speed_h200_2026-12-02d/mgpu_attn_online.py .dev/new/jdiff/models/_online.py
# and, appended to .dev/new/jdiff/models/mosaic_attention.py, a `call` that runs _online.call with the Variant
# whose fields are in jdiff/models/_variant.json (written below). Run with carry [".whl", ".dev"].
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
R=$OUT/r; mkdir -p $R; ROOT=$PWD; D=experiments/results/benchmarks/speed_h200_2026-12-02d; date > $R/log.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/log.txt
START=$SECONDS
for i in -1 0 1 2 3 4; do
  PYTHONPATH=/tmp/site:. timeout 50 python $D/probe_attn_online.py $R/probe_attn_online.json --only $i \
    2>&1 | grep -v "^WARNING" | tail -2 >> $R/probe.out
  echo "row $i rc ${PIPESTATUS[0]} at $((SECONDS - START)) s" >> $R/log.txt
done
rm -f $R/probe_attn_online.json.library.npy
VARIANT=$(python - $R/probe_attn_online.json 2>&1 >> $R/log.txt <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
library = next((r["us"] for r in rows if r["name"] == "library" and "us" in r), None)
fast = [r for r in rows if r["name"] == "online" and "us" in r and r.get("max_diff_library", 1) <= 0.0625]
print("library us:", library, "online:", [(r["warpgroups"], r["key_block"], r["ping_pong"], round(r["us"], 1))
                                         for r in fast])
best = min(fast, key=lambda r: r["us"]) if fast else None
if library and best and best["us"] < 0.95 * library:
    fields = ("warpgroups", "key_block", "ping_pong", "compute_registers", "producer_registers")
    sys.stderr.write(json.dumps({f: best[f] for f in fields}))
PY
)
echo "variant for sampling: ${VARIANT:-none}" >> $R/log.txt
show() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(w, k, round(v['images_per_sec'], 2), round(v.get('seconds_per_batch', v.get('step_ms', 0)), 4), {m: n for m, n in v.items() if 'diff' in m}) for w in ('sample', 'train') for k, v in d.get(w, {}).items()]" $1; }
run() { name=$1; dir=$2; limit=$3; shift 3; echo "== $name ($dir)" >> $R/log.txt; (cd $dir && PYTHONPATH=/tmp/site:. timeout $limit python experiments/benchmark.py "$@" --out /tmp/$name.json > /tmp/$name.out 2>&1); echo "rc $?" >> $R/log.txt; show /tmp/$name.json >> $R/log.txt 2>&1; grep -i "error" /tmp/$name.out | tail -2 >> $R/log.txt; date >> $R/log.txt; }
if [ -n "$VARIANT" ] && [ $((SECONDS - START)) -lt 160 ]; then
  echo "$VARIANT" > $ROOT/.dev/new/jdiff/models/_variant.json
  S="--what sample --sample-steps 100 --repeats 3 --compare-images /tmp/images_old.npy"
  run s_old_1 $ROOT/.dev/old 120 --variants bf16-auto $S --compilation-cache /tmp/cache_old
  run s_new_1 $ROOT/.dev/new 130 --variants bf16-auto $S --compilation-cache /tmp/cache_new
  run s_old_2 $ROOT/.dev/old 65 --variants bf16-auto $S --compilation-cache /tmp/cache_old
  run s_new_2 $ROOT/.dev/new 65 --variants bf16-auto $S --compilation-cache /tmp/cache_new
fi
cat $R/log.txt; cat $R/probe.out
