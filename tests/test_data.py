"""Tests for mmdflow.data: toy shapes, point files, digits and images (NumPy only)."""

import importlib.util

import numpy as np
import pytest

from mmdflow import data

ALL_SHAPES = [*data.SHAPES, "8-gaussians", "mask:A", "mask:Hi"]


@pytest.mark.parametrize("name", ALL_SHAPES)
def test_shape_basic(name):
    x = data.sample(name, 257, seed=3)
    assert x.shape == (257, 2)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    assert np.abs(x).max() < 4.5  # roughly in [-3, 3]^2 (gaussian tails aside)
    assert np.array_equal(x, data.sample(name, 257, seed=3))
    assert not np.array_equal(x, data.sample(name, 257, seed=4))


def test_shapes_mostly_in_box():
    for name in ALL_SHAPES:
        x = data.sample(name, 2000, seed=0)
        assert np.mean(np.abs(x) <= 3.0) > 0.99, name


def test_eight_gaussians_modes():
    x = data.sample("8gaussians", 4000, seed=0)
    r = np.linalg.norm(x, axis=1)
    assert np.all(np.abs(r - 2.0) < 0.6)
    angles = np.arctan2(x[:, 1], x[:, 0])
    k = np.round(angles / (np.pi / 4)) % 8
    # every point lies close to one of the 8 mode angles, and every mode is populated
    resid = np.angle(np.exp(1j * (angles - k * np.pi / 4)))
    assert np.all(np.abs(resid) < 0.3)
    counts = np.bincount(k.astype(int), minlength=8)
    assert counts.min() > 4000 / 8 * 0.8


def test_alias_matches_canonical():
    assert np.array_equal(data.sample("8-gaussians", 50), data.sample("8gaussians", 50))
    assert np.array_equal(data.sample("letter", 50), data.sample("mask:A", 50))


def test_mask_has_hole():
    # the counter of "O" is empty: no sample near the center of the glyph
    x = data.sample("mask:O", 5000, seed=0)
    assert np.linalg.norm(x, axis=1).min() > 0.5


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="moons") as info:
        data.sample("bananas", 10)
    assert "8gaussians" in str(info.value)
    assert "bananas" in str(info.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_n(bad):
    with pytest.raises(ValueError, match="positive integer"):
        data.sample("moons", bad)


def test_load_points_names():
    x = data.load_points("moons", 100, seed=1)
    assert np.array_equal(x, data.sample("moons", 100, seed=1))
    with pytest.raises(ValueError, match="required"):
        data.load_points("moons")


def test_load_points_npy(tmp_path):
    arr = np.random.default_rng(0).normal(size=(50, 3))
    f = tmp_path / "pts.npy"
    np.save(f, arr)
    x = data.load_points(str(f))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, arr, rtol=1e-6)
    sub = data.load_points(f, n=10, seed=2)
    assert sub.shape == (10, 3)
    assert np.array_equal(sub, data.load_points(f, n=10, seed=2))
    # a subset of the rows, without repetition
    rows = {tuple(r) for r in x.tolist()}
    assert all(tuple(r) in rows for r in sub.tolist())
    assert len({tuple(r) for r in sub.tolist()}) == 10
    assert data.load_points(f, n=500).shape == (50, 3)
    ints = tmp_path / "ints.npy"
    np.save(ints, np.arange(12).reshape(6, 2))
    assert data.load_points(ints).dtype == np.float32


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (np.zeros(5), "2-D"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "non-finite"),
        (np.array([[0.0, np.inf]]), "non-finite"),
        (np.array([["a", "b"]]), "dtype"),
        (np.zeros((0, 2)), "empty"),
    ],
)
def test_load_points_bad_content(tmp_path, content, match):
    f = tmp_path / "bad.npy"
    np.save(f, content)
    with pytest.raises(ValueError, match=match) as info:
        data.load_points(str(f))
    assert "bad.npy" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_points_bad_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        data.load_points(str(tmp_path / "missing.npy"))
    txt = tmp_path / "pts.txt"
    txt.write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match=r"\.npy"):
        data.load_points(str(txt))
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not an npy file")
    with pytest.raises(ValueError, match="junk.npy"):
        data.load_points(str(junk))


needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="scikit-learn not installed"
)


@needs_sklearn
def test_digits():
    x, y = data.digits()
    assert x.shape == (1797, 64)
    assert x.dtype == np.float32
    assert x.min() == 0.0
    assert x.max() == 1.0
    assert y.shape == (1797,)
    assert set(np.unique(y)) == set(range(10))
    xs, ys = data.digits(100, seed=1)
    assert xs.shape == (100, 64)
    assert ys.shape == (100,)
    assert np.array_equal(data.load_points("digits", 100, seed=1), xs)
    assert data.load_points("digits").shape == (1797, 64)


@pytest.mark.parametrize("name", data.IMAGES)
def test_image_names(name):
    img = data.image(name)
    assert img.dtype == np.uint8
    assert img.ndim == 3
    assert img.shape[2] == 3
    assert img.shape[0] > 100


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="needs scikit-image")
def test_image_matches_skimage():
    import skimage.data

    assert np.array_equal(data.image("chelsea"), skimage.data.chelsea())


def test_image_errors(tmp_path):
    with pytest.raises(ValueError, match="astronaut"):
        data.image("nosuchimage")
    with pytest.raises(ValueError, match="not found"):
        data.image(str(tmp_path / "missing.png"))


def test_image_file_roundtrip(tmp_path):
    import matplotlib.image as mpimg

    img = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    f = tmp_path / "tiny.png"
    mpimg.imsave(f, img)
    assert np.array_equal(data.image(str(f)), img)


def test_image_points_roundtrip():
    img = data.image("rocket")
    pts, shape = data.image_to_points(img)
    assert pts.dtype == np.float32
    assert pts.shape == (img.shape[0] * img.shape[1], 3)
    assert pts.min() >= 0.0
    assert pts.max() <= 1.0
    out = data.points_to_image(pts, shape)
    assert out.dtype == np.uint8
    assert np.array_equal(out, img)


def test_image_points_subset_and_errors():
    img = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    sub, shape = data.image_to_points(img, max_points=50, seed=0)
    assert sub.shape == (50, 3)
    assert shape == (20, 30, 3)
    assert np.array_equal(sub, data.image_to_points(img, max_points=50, seed=0)[0])
    with pytest.raises(ValueError, match="600"):
        data.points_to_image(sub, shape)
    full, _ = data.image_to_points(img)
    # out-of-range colors are clipped, not wrapped
    assert (data.points_to_image(np.full_like(full, 2.0), shape) == 255).all()
    assert (data.points_to_image(np.full_like(full, -1.0), shape) == 0).all()
    with pytest.raises(ValueError, match="NaN"):
        data.points_to_image(np.full_like(full, np.nan), shape)


def test_image_fallback_without_skimage(monkeypatch):
    # `image` lives in mmdflow.data._images and looks the helper up there.
    monkeypatch.setattr(data._images, "_skimage_file", lambda filename: None)
    with pytest.warns(UserWarning, match="grace_hopper"):
        img = data.image("astronaut")
    assert np.array_equal(img, data.image("grace_hopper"))
