"""The command line's persistent compilation cache: on by default, off on request, and never
overriding a cache the user (or this test suite) configured."""

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

import mmdflow
from mmdflow._compile_cache import ENV_COMPILATION_CACHE


@pytest.fixture
def no_cache():
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()  # as in a fresh process (the suite's cache may be in use)
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()  # back to the suite's cache at its next compilation


def test_cache_directory_default_and_opt_out(no_cache, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_COMPILATION_CACHE, "off")
    assert mmdflow.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    monkeypatch.delenv(ENV_COMPILATION_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    want = str(tmp_path / "xdg" / "mmdflow" / "jax")
    assert mmdflow.enable_compilation_cache() == want
    assert jax.config.jax_compilation_cache_dir == want
    # every program is cached, not only those compiling for a second or more
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    # a configured cache is left alone
    monkeypatch.setenv(ENV_COMPILATION_CACHE, str(tmp_path / "mine"))
    assert mmdflow.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == want


def test_cache_directory_from_the_environment(no_cache, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_COMPILATION_CACHE, str(tmp_path / "mine"))
    assert mmdflow.enable_compilation_cache() == str(tmp_path / "mine")


def test_public_function_takes_a_path_and_caches_every_program(no_cache, monkeypatch, tmp_path):
    # an explicit directory wins over the environment's "off"; after programs were compiled
    # without a cache (JAX decided then not to use one), a new program, however fast to
    # compile, lands in it
    jax.jit(lambda v: v * 2.5)(jax.numpy.ones(3)).block_until_ready()
    monkeypatch.setenv(ENV_COMPILATION_CACHE, "off")
    assert mmdflow.enable_compilation_cache(tmp_path / "c") == str(tmp_path / "c")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
    assert mmdflow.enable_compilation_cache(tmp_path / "other") is None  # already configured
    jax.jit(lambda v: jax.numpy.sin(v) * 3.25)(jax.numpy.ones(7)).block_until_ready()
    assert any(p.is_file() for p in (tmp_path / "c").rglob("*"))
