"""plots.plot_samples: projection convention, dimensions, axis labels."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from mmdflow import plots


@pytest.fixture
def figures(monkeypatch):
    """The figures saved during a test."""
    saved = []
    real = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _pca_reference(ref, dim=2):
    """Principal axes from the covariance's eigenvectors (largest first)."""
    ref = np.asarray(ref, np.float64)
    mean = ref.mean(0)
    w, v = np.linalg.eigh(np.cov(ref - mean, rowvar=False))
    return mean, v[:, np.argsort(w)[::-1][:dim]]


@pytest.mark.parametrize("d", [3, 10, 64])
def test_plot_samples_projects_on_the_targets_principal_axes(tmp_path, figures, d):
    rng = np.random.default_rng(d)
    target = rng.normal(size=(300, d)) * np.linspace(3.0, 0.1, d) + 2.0  # distinct variances
    samples = rng.normal(size=(50, d))
    s2, t2 = plots.plot_samples(samples, target, tmp_path / "s.png", title="t")
    mean, axes = _pca_reference(target)
    for got, pts in ((s2, samples), (t2, target)):
        want = (pts - mean) @ axes
        signs = np.sign(np.sum(got * want, axis=0))  # each axis up to its sign
        np.testing.assert_allclose(got * signs, want, rtol=1e-8, atol=1e-8)
    ax = figures[-1].axes[0]
    assert ax.get_xlabel().startswith("PC 1") and ax.get_ylabel().startswith("PC 2")
    assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.parametrize(("d", "labels"), [(1, ("x", "density")), (2, ("x1", "x2"))])
def test_plot_samples_low_dimensions(tmp_path, figures, d, labels):
    rng = np.random.default_rng(0)
    s2, t2 = plots.plot_samples(
        rng.normal(size=(40, d)), rng.normal(size=(60, d)), tmp_path / "s.png"
    )
    assert s2.shape == (40, d) and t2.shape == (60, d)
    ax = figures[-1].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == labels
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["target", "generated"]


def test_plot_samples_images_and_bad_input(tmp_path):
    x = np.random.default_rng(0).uniform(size=(70, 64))
    plots.plot_samples(x, x, tmp_path / "i.png", images=True)
    assert (tmp_path / "i.png").stat().st_size > 0
    with pytest.raises(ValueError, match="d == 64"):
        plots.plot_samples(x[:, :3], x[:, :3], tmp_path / "j.png", images=True)
    with pytest.raises(ValueError, match="plot_samples"):
        plots.plot_samples(x, x[:, :3], tmp_path / "k.png")
