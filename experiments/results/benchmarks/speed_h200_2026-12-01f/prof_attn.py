"""Profile the Mosaic attention prototype with Mosaic GPU's profiler; print time per scope per warpgroup."""
import collections, glob, json, os, sys
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgpu_attn  # noqa: E402
d = os.path.join(os.environ.get("OUT", "/tmp"), "prof")
os.makedirs(d, exist_ok=True)
qkv = jax.random.normal(jax.random.key(0), (512, 256, 8, 3, 32), jnp.bfloat16)
b = jnp.zeros((256,), jnp.bfloat16)
f = jax.jit(lambda q, b: mgpu_attn.attention(q, b, profile_dir=d))
jax.block_until_ready(f(qkv, b))
jax.block_until_ready(f(qkv, b))
files = sorted(glob.glob(os.path.join(d, "*trace.json")))
ev = json.load(open(files[-1]))["traceEvents"]
per_tid = collections.defaultdict(list)
for e in ev:
    per_tid[e["tid"]].append(e)
tot = collections.defaultdict(float); cnt = collections.Counter(); spans = collections.defaultdict(list)
for tid, es in per_tid.items():
    wg = (tid - 1) % 3
    stack = []
    for e in es:
        if e["ph"] == "B":
            stack.append(e)
        else:
            s = stack.pop()
            tot[(wg, s["name"])] += e["ts"] - s["ts"]; cnt[(wg, s["name"])] += 1
    spans[wg].append(es[-1]["ts"] - es[0]["ts"])
n = len(per_tid) // 3
print("blocks", n, "mean span per wg (us):", {k: round(sum(v) / len(v), 2) for k, v in spans.items()})
for k in sorted(tot):
    print(k, "total per block us", round(tot[k] / n, 3), "count per block", cnt[k] / n, "mean us", round(tot[k] / cnt[k], 4))
for f_ in files[:-1]:
    os.remove(f_)
