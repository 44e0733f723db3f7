"""Makes tests/data/inception_parity.npz: pytorch-fid's own network run on random weights.

The weights are ``jdiff.evaluation.inception.random_inception_state_dict(SEED)``, which the test
regenerates, so only the inputs and pytorch-fid's outputs (a few KB) are committed. Needs torch,
torchvision and pytorch-fid (pip install pytorch-fid --no-deps) beside jdiff's own dependencies; run
from the repository root:

    python experiments/make_inception_fixture.py [--out tests/data/inception_parity.npz]

It also runs the Flax port and prints the largest relative difference, as a first check.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from importlib.metadata import version

import pytorch_fid.inception as pf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jdiff.evaluation import inception  # noqa: E402

SEED = 2015
IMAGE_SHAPE = (2, 32, 24, 3)  # non-square, so that a height/width mix-up shows
RESIZE_CASES = {"up_down": ((7, 5), (11, 4)), "down_up": ((9, 13), (4, 6))}


def pytorch_fid_pool3(state_dict: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    """pytorch-fid's ``InceptionV3([3])`` (resize and normalisation on, FID blocks) on uint8 NHWC images,
    fed as its data loader feeds them: ToTensor's x / 255 in float32, NCHW."""
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}
    # pytorch-fid builds its network by downloading the real weights; hand it ours instead.
    pf.load_state_dict_from_url = lambda *args, **kwargs: tensors
    model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    batch = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(batch)[0][:, :, 0, 0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/data/inception_parity.npz")
    args = parser.parse_args()
    torch.set_num_threads(2)

    rng = np.random.default_rng(SEED)
    images = np.floor(rng.random(IMAGE_SHAPE) * 256).astype(np.uint8)
    state = inception.random_inception_state_dict(SEED)
    pool3 = pytorch_fid_pool3(state, images)

    arrays = {"seed": np.int64(SEED), "images": images, "pool3": pool3,
              "versions": np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                                   f"pytorch-fid {version('pytorch-fid')}")}
    for name, (in_size, out_size) in RESIZE_CASES.items():
        x = rng.random((2, *in_size, 3)).astype(np.float32)
        y = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=out_size, mode="bilinear",
                          align_corners=False).permute(0, 2, 3, 1).numpy()
        arrays[f"resize/{name}/in"], arrays[f"resize/{name}/out"] = x, y
    np.savez(args.out, **arrays)

    import jax

    pool, _ = jax.jit(inception.InceptionV3().apply)(inception.convert_state_dict(state), images)
    error = np.abs(np.asarray(pool) - pool3).max() / np.abs(pool3).max()
    print(f"wrote {args.out}; pool3 scale {np.abs(pool3).max():.3g}, Flax vs pytorch-fid max relative "
          f"difference {error:.2e}")


if __name__ == "__main__":
    main()
