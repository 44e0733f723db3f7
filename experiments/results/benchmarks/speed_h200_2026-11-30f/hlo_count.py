import re, sys, time, collections
sys.path.insert(0, ".")
import jax, jax.numpy as jnp
from experiments import benchmark
from jdiff import train
config = benchmark.load_config("configs/cifar10_baseline.py")
benchmark.apply_variant(config, "bf16-auto")
model = train.build_model(config)
abstract = jax.eval_shape(lambda k: model.init({"params": k}, *train.dummy_inputs(config), train=False), jax.random.key(0))
x = jax.ShapeDtypeStruct((512, 32, 32, 3), jnp.float32)
t = jax.ShapeDtypeStruct((512,), jnp.float32)
text = jax.jit(lambda p, x, t: model.apply(p, x, t, train=False)).lower(abstract, x, t).compile().as_text()
entry = text[text.index("\nENTRY"):]
kinds = collections.Counter(m.group(1) for m in re.finditer(r"\n\s*(?:ROOT )?%([a-z_]+?)(?:\.\d+)* = ", entry))
gemm = re.findall(r'custom-call\(([^)]*)\), custom_call_target="__cublas\$lt\$matmul"', entry)
print("fusions/ops in ENTRY:", dict(kinds.most_common(14)))
print("cublasLt matmuls by operand count:", collections.Counter(len(g.split(", ")) for g in gemm))
