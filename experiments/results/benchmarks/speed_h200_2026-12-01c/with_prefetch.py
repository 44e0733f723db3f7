"""Runs a script with the GroupNorm kernels' prefetch default switched (experiment only): PREFETCH=0|1."""
import os, runpy, sys
sys.path.insert(0, os.getcwd())
from jdiff.models import pallas_group_norm as P
value = bool(int(os.environ["PREFETCH"]))
for fn in (P.forward, P.backward):
    fn.__kwdefaults__["prefetch"] = value
print("prefetch default:", value, flush=True)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
