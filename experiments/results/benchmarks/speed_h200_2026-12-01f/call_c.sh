set -x
timeout 300 python3 .dev/p14/probe_c.py 2>&1 | grep -v Warning | grep -v '^  ' | tail -30
mkdir -p $OUT/dump
cat > /tmp/one.py <<'PY'
import sys, jax, jax.numpy as jnp
sys.path.insert(0, ".dev/p14")
import mgpu_attn
qkv = jnp.zeros((512, 256, 8, 3, 32), jnp.bfloat16); b = jnp.zeros((256,), jnp.bfloat16)
jax.block_until_ready(jax.jit(lambda q, b: mgpu_attn.attention(q, b))(qkv, b))
PY
MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_SASS=1 MOSAIC_GPU_DUMP_TO=$OUT/dump timeout 120 python3 /tmp/one.py > $OUT/dump/stdout.txt 2>&1
ls -la $OUT/dump | head; grep -i 'spill\|registers\|bytes stack' -r $OUT/dump | head -20
cd $OUT && tar czf dump.tgz dump && rm -rf dump
