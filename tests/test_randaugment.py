"""The batched RandAugment of MLKD's strong view against PIL, the library the authors' augmentation calls
(each operation as their dataset code applies it, on uint8 images), and its per-image draws replayed."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from kdforge.data import randaugment as ra


def pil_operation(name, img, v):
    """The authors' operation `name` at magnitude v, written with PIL as their cifar100.py does."""
    return {
        "auto_contrast": lambda: ImageOps.autocontrast(img),
        "brightness": lambda: ImageEnhance.Brightness(img).enhance(v),
        "color": lambda: ImageEnhance.Color(img).enhance(v),
        "contrast": lambda: ImageEnhance.Contrast(img).enhance(v),
        "equalize": lambda: ImageOps.equalize(img),
        "posterize": lambda: ImageOps.posterize(img, int(v)),
        "rotate": lambda: img.rotate(v),
        "sharpness": lambda: ImageEnhance.Sharpness(img).enhance(v),
        "shear_x": lambda: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "shear_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "solarize": lambda: ImageOps.solarize(img, v),
        "translate_x": lambda: img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0)),
        "translate_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1])),
    }[name]()


def images(b=5, h=14, w=18, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (b, h, w, channels), dtype=np.uint8)
    arr[:, :4] = rng.integers(0, 256, (b, 1, 1, channels))  # a flat band, so equalize/contrast see a skewed histogram
    return arr


def as_tensor(arr):
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def as_levels(x):
    return (x * 255.0).round().permute(0, 2, 3, 1).numpy()


OPERATIONS = [(op, low, high) for op, low, high in ra.OPERATIONS if op is not ra.identity]


@pytest.mark.parametrize("op, low, high", OPERATIONS, ids=[op.__name__ for op, _, _ in OPERATIONS])
def test_each_operation_matches_pil_within_one_level(op, low, high):
    arr = images()
    # across the range, away from values that put a sampled point exactly on a pixel edge (PIL accumulates its
    # coordinates step by step, so such a point may fall either side)
    magnitudes = low + (high - low) * torch.tensor([0.13, 0.31, 0.52, 0.71, 0.89], dtype=torch.float64)
    ours = as_levels(op(as_tensor(arr), magnitudes))
    for i, v in enumerate(magnitudes.tolist()):
        want = np.asarray(pil_operation(op.__name__, Image.fromarray(arr[i]), v), dtype=float)
        assert np.abs(ours[i] - want).max() <= 1.0, (op.__name__, v)


@pytest.mark.parametrize("name", ["contrast", "equalize", "solarize", "rotate"])
def test_grayscale_images_match_pil_too(name):
    arr = images(channels=1)
    op = getattr(ra, name)
    v = torch.tensor([0.3, 0.7, 100.0, 20.0, -25.0]) if name in ("solarize", "rotate") else torch.full((5,), 0.3)
    ours = as_levels(op(as_tensor(arr), v))
    for i in range(len(arr)):
        want = np.asarray(pil_operation(name, Image.fromarray(arr[i, :, :, 0], "L"), float(v[i])), dtype=float)
        assert np.abs(ours[i, :, :, 0] - want).max() <= 1.0


def test_cutout_paints_the_authors_square():
    """CutoutAbs: corner = int(max(0, centre - side/2)), far side min(size, corner + side), drawn with PIL."""
    arr = images(b=4, h=12, w=16)
    fractions = torch.tensor([0.0, 0.2, 0.45, 0.3])
    centres = torch.tensor([[3.0, 1.2, 15.7, 8.4], [5.0, 0.3, 11.9, 6.6]])
    fill = torch.tensor([125.0, 123.0, 114.0]) / 255.0
    ours = as_levels(ra.cutout(as_tensor(arr), fractions, fill, centre=centres))
    for i in range(4):
        img = Image.fromarray(arr[i])
        side = float(fractions[i]) * 16
        if side > 0:
            x0, y0 = int(max(0, float(centres[0, i]) - side / 2)), int(max(0, float(centres[1, i]) - side / 2))
            ImageDraw.Draw(img).rectangle((x0, y0, min(16, x0 + side), min(12, y0 + side)), (125, 123, 114))
        assert np.array_equal(ours[i], np.asarray(img, dtype=float)), i


def test_rand_augment_is_each_images_drawn_operations_in_turn():
    """Replaying the draws (same generator seed) one image at a time gives the batched result."""
    x = as_tensor(images(b=12))
    fill = torch.tensor([0.5, 0.4, 0.3])
    got = ra.rand_augment(x.clone(), fill, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    chosen = torch.randint(0, len(ra.OPERATIONS), (2, 12), generator=g)
    draws = torch.rand(2, 12, generator=g)
    fractions = torch.rand(12, generator=g) * 0.5
    centres = torch.rand(2, 12, generator=g) * torch.tensor([[18.0], [14.0]])
    for i in range(12):
        one = x[i:i + 1].clone()
        for r in range(2):
            op, low, high = ra.OPERATIONS[chosen[r, i]]
            one = op(one, (low + (high - low) * draws[r, i]).view(1))
        one = ra.cutout(one, fractions[i:i + 1], fill, centre=centres[:, i:i + 1])
        assert torch.allclose(got[i:i + 1], one, atol=1e-6), i
    assert len(set(chosen.flatten().tolist())) > 5  # the draw spans the operations


def test_rand_augment_leaves_its_input_alone_and_rejects_bad_input():
    x = as_tensor(images(b=3))
    before = x.clone()
    ra.rand_augment(x, torch.zeros(3))
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="rand_augment"):
        ra.rand_augment(torch.zeros(3, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="max_cutout"):
        ra.rand_augment(x, torch.zeros(3), max_cutout=2.0)
