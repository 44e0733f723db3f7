"""experiments/benchmark.py's search for the largest batch that fits, with probes whose memory is known."""

import os
import sys

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


def test_nothing_fits_is_an_error_and_bugs_are_not_memory():
    with pytest.raises(ValueError, match="cannot fit 8 images in 1.00 GiB"):
        benchmark.largest_batch(linear_probe(2 * GIB, 2**20), 1 * GIB, base=128, multiple=8)

    def broken(batch, run):
        if run:
            raise TypeError("a bug")
        return GIB + batch

    with pytest.raises(TypeError, match="a bug"):
        benchmark.largest_batch(broken, 2 * GIB, base=128, multiple=8)
