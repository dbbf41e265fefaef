"""Runs the notebooks in ``notebooks/`` in-process at small size, without Jupyter.

Each notebook's code cells are concatenated (IPython magics ``%...`` and shell
lines ``!...`` dropped) and executed in a fresh namespace with
``MMDFLOW_NOTEBOOK_SMALL=1`` and matplotlib's Agg backend; one result computed
by the notebook is then checked.
"""

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from _notebooks import notebook_code

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning"),
]


def _run(name: str, monkeypatch) -> dict:
    monkeypatch.setenv("MMDFLOW_NOTEBOOK_SMALL", "1")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = NOTEBOOKS / name
    ns = {"__name__": "__notebook__"}
    try:
        with matplotlib.rc_context():  # the notebooks set rcParams (figure dpi)
            exec(compile(notebook_code(path), str(path), "exec"), ns)
    finally:
        plt.close("all")
    return ns


NAMES = [
    "01_sobolev_2d_transport.ipynb",
    "02_color_transfer.ipynb",
    "03_mmd_flow_noise_injection.ipynb",
    "05_mmd_gan_learned_kernels.ipynb",
    "flows_compare.ipynb",
]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_saved_executed(name):
    path = NOTEBOOKS / name
    assert path.stat().st_size < 2_000_000
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    assert nb["cells"][0]["cell_type"] == "markdown"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["execution_count"] is not None for c in code)
    outputs = [o for c in code for o in c["outputs"]]
    assert not any(o["output_type"] == "error" for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    # saved from a full-size run, not the small one
    assert any("SMALL=False" in "".join(o.get("text", "")) for o in outputs)


def test_01_sobolev_2d_transport(monkeypatch):
    ns = _run("01_sobolev_2d_transport.ipynb", monkeypatch)
    assert ns["SMALL"]
    summary = ns["summary"]
    assert len(summary) == 2
    for runs in summary.values():
        regs = sorted(runs)
        for r in runs.values():
            assert np.isfinite(r["total_kinetic"])
            assert r["mmd2_final"] < r["mmd2_initial"]
        # The largest ridge gives the lowest-kinetic-energy (slowest) path.
        assert runs[regs[-1]]["total_kinetic"] < runs[regs[0]]["total_kinetic"]


def test_02_color_transfer(monkeypatch):
    pytest.importorskip("skimage")
    ns = _run("02_color_transfer.ipynb", monkeypatch)
    assert ns["SMALL"]
    res = ns["results"]
    assert np.isfinite(res["mmd2_after"])
    assert res["mmd2_after"] < 0.5 * res["mmd2_before"]
    assert ns["result_image"].shape == ns["source_image"].shape


def test_03_mmd_flow_noise_injection(monkeypatch):
    ns = _run("03_mmd_flow_noise_injection.ipynb", monkeypatch)
    assert ns["SMALL"]
    results = ns["results"]
    assert len(results) == 2
    for runs in results.values():
        assert "noiseless" in runs
        assert any(k.startswith("noisy") for k in runs)
        for r in runs.values():
            assert np.isfinite(r["mmd2"]).all()
            assert r["mmd2"][-1] < r["mmd2"][0]


def test_05_mmd_gan_learned_kernels(monkeypatch):
    ns = _run("05_mmd_gan_learned_kernels.ipynb", monkeypatch)
    assert ns["SMALL"]
    assert list(ns["runs"]) == [("kernelized SGD", "smmd")]
    for (name, crit), (hist, samples) in ns["runs"].items():
        assert np.isfinite(hist["eval_mmd2"]).all() and np.isfinite(samples).all(), (name, crit)
        assert hist["eval_mmd2"][-1] < hist["eval_mmd2"][0], (name, crit)
        assert len(hist["critic_mmd2"]) == len(hist["critic_penalty"]) == 4


def test_flows_compare(monkeypatch):
    ns = _run("flows_compare.ipynb", monkeypatch)
    assert ns["SMALL"]
    runs = {(r["flow"], r["problem"]) for r in ns["results"]}
    assert runs == {("mmd", "moons->rings"), ("sobolev", "moons->rings"), ("svgd", "banana")}
    for r in ns["results"]:
        assert np.isfinite(r["mmd2"]).all() and r["mmd2_end"] < r["mmd2_start"], r["flow"]
    assert ns["scaling"][0]["exponent"] is not None
