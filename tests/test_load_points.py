"""``data.load_points``: the rows kept when subsampling, and one-line errors for bad files."""

import pickle

import numpy as np
import pytest

from mmdflow import data


def test_return_indices_of_a_subsampled_file(tmp_path):
    arr = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    f = tmp_path / "pts.npy"
    np.save(f, arr)
    x, rows = data.load_points(f, n=10, seed=2, return_indices=True)
    assert rows.dtype == np.int64 and rows.shape == (10,) and len(set(rows.tolist())) == 10
    np.testing.assert_array_equal(x, arr[rows])
    np.testing.assert_array_equal(x, data.load_points(f, n=10, seed=2))  # the same subset
    x, rows = data.load_points(f, n=50, return_indices=True)  # everything, in order
    assert rows is None
    np.testing.assert_array_equal(x, arr)
    x, rows = data.load_points("moons", 20, return_indices=True)  # sampled, not subsampled
    assert rows is None and x.shape == (20, 2)


def test_return_indices_of_digits():
    pytest.importorskip("sklearn")
    full, _ = data.digits()
    x, rows = data.load_points("digits", 30, seed=1, return_indices=True)
    np.testing.assert_array_equal(x, full[rows])
    np.testing.assert_array_equal(x, data.digits(30, seed=1)[0])


def _bad_files(tmp_path):
    np.savez(tmp_path / "arch.npz", x=np.zeros((5, 2)))
    (tmp_path / "arch.npz").rename(tmp_path / "npz.npy")
    (tmp_path / "dir.npy").mkdir()
    (tmp_path / "text.npy").write_text("1 2\n3 4\n")
    np.save(tmp_path / "obj.npy", np.array([[1.0, None]], dtype=object), allow_pickle=True)
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps({"a": 1}))
    np.save(tmp_path / "three.npy", np.zeros((4, 2, 2)))
    return {
        "npz.npy": ".npz archive",
        "dir.npy": "is a directory",
        "text.npy": "not a .npy file (it holds text",
        "obj.npy": "object array",
        "pickle.npy": "pickled Python object",
        "three.npy": "expected a 2-D array",
    }


@pytest.mark.parametrize(
    "name", ["npz.npy", "dir.npy", "text.npy", "obj.npy", "pickle.npy", "three.npy"]
)
def test_bad_files_are_one_line_value_errors(tmp_path, name):
    needle = _bad_files(tmp_path)[name]
    with pytest.raises(ValueError, match="load_points") as info:
        data.load_points(tmp_path / name)
    msg = str(info.value)
    assert needle in msg and name in msg and "\n" not in msg
