"""``data.load_points``: the rows kept when subsampling, and one-line errors for bad files."""

import numpy as np
import pytest
from _files import BAD_POINT_FILES, bad_point_files

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


@pytest.mark.parametrize("name", sorted(BAD_POINT_FILES))
def test_bad_files_are_one_line_value_errors(tmp_path, name):
    needle = bad_point_files(tmp_path)[name]
    with pytest.raises(ValueError, match="load_points") as info:
        data.load_points(tmp_path / name)
    msg = str(info.value)
    assert needle in msg and name in msg and "\n" not in msg
