"""Shared helper for the notebook tests: the code cells of a notebook as one script."""

import json
from pathlib import Path


def notebook_code(path: Path) -> str:
    """Joins a notebook's code cells, dropping IPython magics and shell lines (``%``, ``!``)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    lines = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"]
        src = "".join(src) if isinstance(src, list) else src
        lines += [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        lines.append("")
    return "\n".join(lines)
