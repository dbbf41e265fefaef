"""Test configuration: float64 available for references, strict rank promotion, and a
persistent compilation cache for this run.

The CLI runs of different tests build new jitted functions for the same programs, which the
in-memory caches of JAX cannot share, so they compiled the same XLA programs again and
again. A persistent compilation cache in this pytest run's temporary directory (shared by
the xdist workers and the subprocesses that tests start; empty at the start of every run)
skips only XLA's compilation of a program compiled before: tracing and lowering still run,
and the executable is the one compiled for the identical program.
"""

import os

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


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin's
def pytest_configure(config):
    cache = _sharding_checks.shared_dir(config, "jax_compilation_cache")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # for subprocesses (mmdflow CLI)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_finish(session):
    # the 8-device sharding checks compile for about a minute in a subprocess: start it now,
    # so that it runs beside the other tests instead of stalling the worker that needs it
    if any(
        item.path.name in ("test_sharding.py", "test_flow_contract.py")
        and "results" in getattr(item, "fixturenames", ())
        for item in session.items
    ):
        _sharding_checks.start(_sharding_checks.shared_dir(session.config))


def pytest_sessionfinish(session, exitstatus):
    _sharding_checks.join(kill=exitstatus == pytest.ExitCode.INTERRUPTED)
