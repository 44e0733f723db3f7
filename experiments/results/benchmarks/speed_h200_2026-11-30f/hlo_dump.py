import gzip, os, sys, time
sys.path.insert(0, ".")
import jax, jax.numpy as jnp
from experiments import benchmark
from jdiff import train
out = os.environ["OUT"]
config = benchmark.load_config("configs/cifar10_baseline.py")
benchmark.apply_variant(config, "bf16-auto")
model = train.build_model(config)
abstract = jax.eval_shape(lambda k: model.init({"params": k}, *train.dummy_inputs(config), train=False), jax.random.key(0))
x = jax.ShapeDtypeStruct((512, 32, 32, 3), jnp.float32)
t = jax.ShapeDtypeStruct((512,), jnp.float32)
t0 = time.time()
compiled = jax.jit(lambda p, x, t: model.apply(p, x, t, train=False)).lower(abstract, x, t).compile()
print("sample model compile", time.time() - t0, flush=True)
with gzip.open(f"{out}/sample_model_b512.hlo.txt.gz", "wt") as f:
    f.write(compiled.as_text())
t0 = time.time()
compiled, *_ = benchmark.compile_train_step(config, 128)
print("train compile", time.time() - t0, flush=True)
with gzip.open(f"{out}/train_step_b128.hlo.txt.gz", "wt") as f:
    f.write(compiled.as_text())
