python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
mkdir -p /tmp/dump
XLA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*generate.*" timeout 400 python experiments/profile_step.py --out /tmp/prof --what sample --variant bf16-auto 2>&1 | tail -40 > $OUT/profile_sample.txt
cp /tmp/prof/sample.summary.json $OUT/profile_sample.summary.json; cp /tmp/prof/sample.trace.json.gz $OUT/profile_sample.trace.json.gz
tar czf $OUT/dump.tgz -C /tmp/dump $(cd /tmp/dump && ls | grep "generate.*after_optimizations.txt")
ls -la $OUT
