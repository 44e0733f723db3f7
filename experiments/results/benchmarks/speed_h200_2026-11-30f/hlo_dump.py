"""The CIFAR-10 UNet's optimised HLO on this machine's device: the sampler's network at batch 512 (and, with
--train, the train step at batch 128) written gzipped to $OUT, and the network's fusion and cuBLAS-call
counts printed. Run from the repository root: OUT=dir python <this file> [--train]."""
import collections
import gzip
import os
import re
import sys

sys.path.insert(0, ".")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments import benchmark  # noqa: E402
from jdiff import train  # noqa: E402

out = os.environ["OUT"]
config = benchmark.load_config("configs/cifar10_baseline.py")
benchmark.apply_variant(config, "bf16-auto")
model = train.build_model(config)
abstract = jax.eval_shape(lambda k: model.init({"params": k}, *train.dummy_inputs(config), train=False),
                          jax.random.key(0))
x, t = jax.ShapeDtypeStruct((512, 32, 32, 3), jnp.float32), jax.ShapeDtypeStruct((512,), jnp.float32)
text = jax.jit(lambda p, x, t: model.apply(p, x, t, train=False)).lower(abstract, x, t).compile().as_text()
with gzip.open(f"{out}/sample_model_b512.hlo.txt.gz", "wt") as f:
    f.write(text)
entry = text[text.index("\nENTRY"):]
kinds = collections.Counter(m.group(1) for m in re.finditer(r"\n\s*(?:ROOT )?%([a-z_]+?)(?:\.\d+)* = ", entry))
gemm = re.findall(r'custom-call\(([^)]*)\), custom_call_target="__cublas\$lt\$matmul"', entry)
print("fusions/ops in ENTRY:", dict(kinds.most_common(14)))
print("cublasLt matmuls by operand count:", collections.Counter(len(g.split(", ")) for g in gemm))
if "--train" in sys.argv:
    compiled, *_ = benchmark.compile_train_step(config, 128)
    with gzip.open(f"{out}/train_step_b128.hlo.txt.gz", "wt") as f:
        f.write(compiled.as_text())
