"""Test configuration: float64 available for references, strict rank promotion."""

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
