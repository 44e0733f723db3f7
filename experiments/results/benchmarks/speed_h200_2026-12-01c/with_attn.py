"""Runs a script with the attention kernel's reach patched (experiment only): ATTN_MAX=64 (before) or 256,
with the best 'kernel from qkv' setting of the probe JSON in ATTN_PROBE."""
import json, os, runpy, sys
sys.path.insert(0, os.getcwd())
from jdiff.models import pallas_attention as A
A.MAX_TOKENS = int(os.environ["ATTN_MAX"])
if A.MAX_TOKENS > 64:
    rows = [r for r in json.load(open(os.environ["ATTN_PROBE"]))["rows"] if r["name"] == "kernel from qkv"]
    best = min(rows, key=lambda r: r["us"])
    A.attention_from_qkv.__kwdefaults__.update(block_q=best["block_q"], num_warps=best["num_warps"])
print("attention kernel up to", A.MAX_TOKENS, A.attention_from_qkv.__kwdefaults__, flush=True)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
