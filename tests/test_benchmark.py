"""experiments/benchmark.py's search for the largest batch that fits, with probes whose memory is known;
experiments/bench_conv.py's alternative convolution and a smoke run of it; a smoke run of
bench_attention.py."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import benchmark  # noqa: E402

GIB = 2**30


def linear_probe(fixed, per_image, runs_up_to=None, log=None):
    """Bytes = fixed + per_image·batch by the analysis; running above ``runs_up_to`` images fails as the
    allocator does."""
    def probe(batch, run):
        if log is not None:
            log.append((batch, run))
        if run and runs_up_to is not None and batch > runs_up_to:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes.")
        return fixed + per_image * batch
    return probe


def test_prediction_from_two_probes_is_confirmed_by_a_run():
    log = []
    result = benchmark.largest_batch(linear_probe(1 * GIB, 2**20, log=log), 2 * GIB, base=128, multiple=8)
    assert result["mib_per_image"] == pytest.approx(1.0) and result["fixed_gib"] == pytest.approx(1.0)
    assert result["predicted_batch"] == result["largest_batch"] == 1024   # (2 − 1) GiB / 1 MiB
    assert log == [(128, False), (256, False), (1024, True)]


def test_fewer_images_when_the_device_says_no():
    result = benchmark.largest_batch(linear_probe(GIB, 2**20, runs_up_to=850), 2 * GIB, base=128, multiple=16)
    assert [a["batch"] for a in result["attempts"]] == [1024, 912, 816]
    assert [a["ran"] for a in result["attempts"]] == [False, False, True]
    assert "RESOURCE_EXHAUSTED" in result["attempts"][0]["error"]
    assert result["largest_batch"] == 816


def test_image_differences_in_minus_one_to_one_units():
    """The sample comparison (between variants, or with --compare-images between versions of the code):
    largest and mean absolute difference and the share of values apart by more than one uint8 level."""
    reference = np.zeros((2, 4, 4, 3), np.float32)
    images = reference.copy()
    images[0, 0, 0] = [0.5, 0.005, 0.0]  # one value a level or more away (2/255 ≈ 0.0078 is one level)
    got = benchmark.image_differences(images, reference, "file")
    assert got == {"images_max_abs_diff_to_file": 0.5,
                   "images_mean_abs_diff_to_file": pytest.approx(0.505 / 96),
                   "pixels_differing_by_a_uint8_level_from_file": 1 / 96}


def test_nothing_fits_is_an_error_and_bugs_are_not_memory():
    with pytest.raises(ValueError, match="cannot fit 8 images in 1.00 GiB"):
        benchmark.largest_batch(linear_probe(2 * GIB, 2**20), 1 * GIB, base=128, multiple=8)

    def broken(batch, run):
        if run:
            raise TypeError("a bug")
        return GIB + batch

    with pytest.raises(TypeError, match="a bug"):
        benchmark.largest_batch(broken, 2 * GIB, base=128, multiple=8)


@pytest.mark.parametrize("kernel, stride, channels", [(3, 1, 5), (3, 2, 4), (1, 1, 6)])
def test_patch_matmul_conv_equals_lax_conv(kernel, stride, channels):
    """bench_conv.py's alternative (im2col + one matrix product) computes lax.conv_general_dilated's
    result, forward and gradients, so that its timings compare like with like."""
    from jax import lax

    from bench_conv import patch_matmul_conv

    key_x, key_w = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (2, 9, 7, channels))
    w = jax.random.normal(key_w, (kernel, kernel, channels, 3))
    pad = ((kernel // 2,) * 2,) * 2
    numbers = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (stride, stride), pad, dimension_numbers=numbers,
                                                 precision="highest")))

    reference = lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=numbers,
                                         precision="highest")
    ours = patch_matmul_conv(x, w, (stride, stride), pad, dimension_numbers=numbers, precision="highest")
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.grad(loss(patch_matmul_conv), (0, 1))(x, w),
                    jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_benchmark_script_smoke(tmp_path):
    """experiments/bench_conv.py finds the UNet's convolutions and times both implementations, which agree."""
    import bench_conv

    out = tmp_path / "conv.json"
    bench_conv.main(["--smoke", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 and all(row["count"] >= 1 for row in rows)
    for row in rows:
        assert row["input"][0] == 2 and len(row["kernel"]) == 4
        for implementation in ("xla", "matmul"):
            assert row[implementation]["ms"] > 0 and row[implementation]["max_relative_diff_f32"] < 1e-4


@pytest.mark.parametrize("direction", ["forward", "training"])
def test_attention_benchmark_script_smoke(tmp_path, direction):
    """experiments/bench_attention.py times XLA's attention, jdiff's short-sequence kernel and the Pallas
    flash-attention kernel (both in the interpreter here), whose results (forward, or the gradients with
    respect to q, k, v) match XLA's; in the forward direction also jdiff's Mosaic GPU kernel (interpreted)
    on a second shape that it takes, reading one q|k|v product."""
    import bench_attention

    out = tmp_path / "attention.json"
    bench_attention.main(["--smoke", "--direction", direction, "--out", str(out)])
    row, *mosaic_rows = json.loads(out.read_text())["results"]
    if direction == "forward":
        (mosaic_row,) = mosaic_rows
        assert mosaic_row["shape"] == [2, 128, 1, 16] and "short" not in mosaic_row
        assert mosaic_row["mosaic"]["ms"] > 0 and mosaic_row["mosaic"]["max_diff"] < 2e-2
    else:
        assert not mosaic_rows
    assert row["direction"] == direction and row["xla"]["ms"] > 0 and "mosaic" not in row
    assert row["short"]["ms"] > 0 and row["short"]["max_diff"] < 2e-2
    (pallas,) = row["pallas"]
    assert pallas["ok"] and pallas["max_diff"] < 2e-2 and pallas["ms"] > 0
