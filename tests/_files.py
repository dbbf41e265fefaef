"""Broken point files for the input tests (library and command line)."""

import pickle

import numpy as np

#: file name -> what the one-line error must say about it
BAD_POINT_FILES = {
    "npz.npy": ".npz archive",
    "dir.npy": "is a directory",
    "text.npy": "not a .npy file (it holds text",
    "obj.npy": "object array",
    "pickle.npy": "pickled Python object",
    "three.npy": "expected a 2-D array",
}


def bad_point_files(tmp_path):
    """Writes every file of :data:`BAD_POINT_FILES` into ``tmp_path``; returns the dict."""
    np.savez(tmp_path / "arch.npz", x=np.zeros((5, 2)))
    (tmp_path / "arch.npz").rename(tmp_path / "npz.npy")
    (tmp_path / "dir.npy").mkdir()
    (tmp_path / "text.npy").write_text("1 2\n3 4\n")
    np.save(tmp_path / "obj.npy", np.array([[1.0, None]], dtype=object), allow_pickle=True)
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps({"a": 1}))
    np.save(tmp_path / "three.npy", np.zeros((4, 2, 2)))
    return BAD_POINT_FILES
