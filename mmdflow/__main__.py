"""``python -m mmdflow``: the same command line as the ``mmdflow`` script (see :mod:`mmdflow.cli`)."""

from mmdflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
