"""JAX's persistent compilation cache, set up for mmdflow's many small programs."""

from __future__ import annotations

import os
from pathlib import Path

#: the cache directory, or "off": read by :func:`enable_compilation_cache` when it is given no
#: path; default ``$XDG_CACHE_HOME/mmdflow/jax`` (``~/.cache/mmdflow/jax``)
ENV_COMPILATION_CACHE = "MMDFLOW_COMPILATION_CACHE"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its directory (None: unchanged).

    A later process running the same programs (same shapes, options, JAX version and backend)
    then loads them from disk instead of compiling them: the first ``mmd2`` call at n = 1000
    on a 2-core CPU takes about 0.25 s instead of 0.5-0.7 s (``benchmarks/RESULTS.md``). Every
    program is cached however fast it compiled (JAX's default skips those under 1 s, which
    is nearly all of mmdflow's; they add up to seconds in a run). The ``mmdflow`` command
    calls this at start.

    Nothing changes when a cache directory is already configured (``JAX_COMPILATION_CACHE_DIR``
    or ``jax.config``), or when ``path`` is None and ``MMDFLOW_COMPILATION_CACHE=off``. It may
    be called after programs were compiled; those compiled later are cached.

    Args:
      path: the cache directory; None: ``$MMDFLOW_COMPILATION_CACHE``, else
        ``$XDG_CACHE_HOME/mmdflow/jax`` (``~/.cache/mmdflow/jax``).

    Returns:
      The directory now used, or None when nothing was changed.

    Example:
      >>> import tempfile, jax, mmdflow
      >>> old = jax.config.jax_compilation_cache_dir
      >>> jax.config.update("jax_compilation_cache_dir", None)
      >>> d = tempfile.mkdtemp()
      >>> mmdflow.enable_compilation_cache(d) == d
      True
      >>> mmdflow.enable_compilation_cache(d) is None  # already configured
      True
      >>> jax.config.update("jax_compilation_cache_dir", old)
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return None
    if path is None:
        setting = os.environ.get(ENV_COMPILATION_CACHE, "")
        if setting.lower() == "off":
            return None
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(setting).expanduser() if setting else Path(base) / "mmdflow" / "jax"
    path = str(path)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
