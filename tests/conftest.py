"""Test configuration: float64 available for references, strict rank promotion."""

import _sharding_checks
import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Tolerances by dtype for comparisons against float64 NumPy references.
RTOL = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-10}


def pytest_collection_finish(session):
    # the 8-device sharding checks compile for about a minute in a subprocess: start it now,
    # so that it runs beside the other tests instead of stalling the worker that needs it
    if any(
        item.path.name == "test_sharding.py" and "results" in getattr(item, "fixturenames", ())
        for item in session.items
    ):
        _sharding_checks.start(_sharding_checks.shared_dir(session.config))


def pytest_sessionfinish(session, exitstatus):
    _sharding_checks.join(kill=exitstatus == pytest.ExitCode.INTERRUPTED)
