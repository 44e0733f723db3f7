"""Prototype (twenty-first session; checked in Mosaic GPU's interpreter and lowered for CUDA on the CPU with
jax 0.11.2, not yet run on a GPU): y = [x_1 | x_2 | ...]·W + c as a Pallas Mosaic GPU kernel (persistent
CTAs over (block_m, block_n) output tiles; per part, a TMA pipeline over its channels feeding wgmma into one
float32 accumulator; c added in the epilogue, y stored by TMA)."""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu


def concat_dense(parts, w, c, *, block_m=128, block_n=128, block_k=64, steps=4, ctas=None, interpret=False):
    rows = parts[0].shape[0]
    features = w.shape[1]
    channels = [p.shape[1] for p in parts]
    grid_m, grid_n = rows // block_m, features // block_n
    ctas = ctas or jax.devices()[0].core_count

    def body(*refs):
        x_gmems, (w_gmem, c_gmem, o_gmem) = refs[:len(parts)], refs[len(parts):]

        @plgpu.nd_loop((grid_m * grid_n,), collective_axes="sm")
        def tiles(info):
            (index,) = info.index
            mi, ni = lax.div(index, grid_n), lax.rem(index, grid_n)

            def acc_scope(acc_ref):
                first = 0
                for x_gmem, width in zip(x_gmems, channels):
                    plgpu.emit_pipeline(
                        lambda _, x_smem, w_smem: plgpu.wgmma(acc_ref, x_smem, w_smem),
                        grid=(width // block_k,),
                        in_specs=[plgpu.BlockSpec((block_m, block_k), lambda k: (mi, k), delay_release=1),
                                  plgpu.BlockSpec((block_k, block_n), lambda k: (k, ni), delay_release=1)],
                        max_concurrent_steps=steps,
                    )(x_gmem, w_gmem.at[pl.ds(first, width)])
                    first += width
                return acc_ref[...]

            acc = pl.run_scoped(acc_scope, plgpu.ACC((block_m, block_n)))

            @functools.partial(pl.run_scoped, o_smem=plgpu.SMEM((block_m, block_n), o_gmem.dtype),
                               c_smem=plgpu.SMEM((block_n,), jnp.float32), loaded=plgpu.Barrier())
            def store(o_smem, c_smem, loaded):
                plgpu.copy_gmem_to_smem(c_gmem.at[pl.ds(ni * block_n, block_n)], c_smem, loaded)
                plgpu.barrier_wait(loaded)
                o_smem[...] = (acc + c_smem[...][None, :]).astype(o_smem.dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[pl.ds(mi * block_m, block_m),
                                                          pl.ds(ni * block_n, block_n)])
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    kwargs = {}
    if interpret:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
        kwargs["interpret"] = InterpretGPUParams()
    return plgpu.kernel(
        body, out_type=jax.ShapeDtypeStruct((rows, features), parts[0].dtype), grid=(ctas,),
        grid_names=("sm",),
        kernel_name="concat_dense_mgpu",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup), **kwargs,
    )(*parts, w, c)


if __name__ == "__main__":
    import numpy as np
    keys = jax.random.split(jax.random.key(0), 4)
    x1 = jax.random.normal(keys[0], (256, 128), jnp.bfloat16)
    x2 = jax.random.normal(keys[1], (256, 64), jnp.bfloat16)
    w = (jax.random.normal(keys[2], (192, 128)) / 14).astype(jnp.bfloat16)
    c = jax.random.normal(keys[3], (128,), jnp.float32)
    y = concat_dense((x1, x2), w, c, block_m=64, block_n=64, block_k=64, steps=2, ctas=2, interpret=True)
    ref = (np.concatenate([np.asarray(x1, np.float64), np.asarray(x2, np.float64)], 1)
           @ np.asarray(w.astype(jnp.float32), np.float64) + np.asarray(c, np.float64))
    print("max diff", float(np.abs(np.asarray(y.astype(jnp.float32), np.float64) - ref).max()), "scale",
          float(np.abs(ref).max()))
