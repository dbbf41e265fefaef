"""The docstring examples of every mmdflow module run as written.

They run under JAX's default configuration, as a user would paste them (float32, implicit
rank promotion allowed), not under this suite's float64 / rank-promotion-raise settings.
"""

import doctest
import importlib
import pkgutil

import jax
import pytest

import mmdflow

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(name):
    module = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder().find(module, name) if t.examples]


MODULES = [
    info.name
    for info in pkgutil.walk_packages(mmdflow.__path__, "mmdflow.")
    if _examples(info.name)
]


def test_the_public_modules_have_examples():
    for name in ("mmdflow.kernels", "mmdflow.ops", "mmdflow.mmd", "mmdflow.flows"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    lines = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    with jax.enable_x64(False), jax.numpy_rank_promotion("allow"):
        for test in _examples(name):
            runner.run(test, out=lines.append)
    assert runner.failures == 0, "".join(lines)
