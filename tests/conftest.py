"""Test configuration: float64 available for references, strict rank promotion, and a
persistent compilation cache for this run.

The CLI runs of different tests build new jitted functions for the same programs, which the
in-memory caches of JAX cannot share, so they compiled the same XLA programs again and
again. A persistent compilation cache in this pytest run's temporary directory (shared by
the xdist workers and the subprocesses that tests start; empty at the start of every run)
skips only XLA's compilation of a program compiled before: tracing and lowering still run,
and the executable is the one compiled for the identical program.

XLA compiles the tests' programs without its expensive CPU optimisations and with its legacy
CPU fusion emitters (:data:`FAST_COMPILE_FLAGS`, added to ``XLA_FLAGS`` unless it already names
them): the tests run small inputs, where compilation dominates. Measured on 2 cores:
tests/test_kernels.py and tests/test_mmd.py took 291 s of CPU time with the default flags and
223 s without the expensive optimisations; the legacy emitters then cut the backend compile
time of a test_ops.py sample from 61 s to 24 s, and the whole suite from 1,115 s to about
700 s. Speed is measured by ``benchmarks/``, with the default flags. (XLA recomputes cheap
values inside each fusion that uses them, and the legacy emitters round some of those copies
differently: two float32 accuracy tests showed that the library's centring on a recomputed
mean depended on one codegen, now :func:`mmdflow.kernels.centred`; the third failure is
explained in test_defaults.py's ``max_move`` test.) To run
the suite under XLA's default CPU codegen, name the flags: ``XLA_FLAGS=
"--xla_cpu_use_fusion_emitters=true --xla_backend_optimization_level=3" pytest``.
"""

import os

#: XLA flags for the test processes and the subprocesses they start (see above)
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)
_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_flags, *(f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in _flags)]
).strip()

import _sharding_checks  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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
