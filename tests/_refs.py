"""Independent float64 NumPy references (written from the formulas, not from mmdflow)."""

import numpy as np


def sqd(X, Y):
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    return ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)


def gram(name, X, Y, p):
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    D2 = sqd(X, Y)
    D = np.sqrt(D2)
    T = X @ Y.T
    if name == "gaussian":
        return np.exp(-D2 / (2 * p["bw"] ** 2))
    if name == "mixture":
        return sum(w * np.exp(-D2 / (2 * b**2)) for b, w in zip(p["bws"], p["ws"], strict=True))
    if name == "imq":
        return (1 + D2 / p["c"] ** 2) ** p["beta"]
    if name == "laplace":
        return np.exp(-D / p["bw"])
    if name == "rq":
        return (1 + D2 / (2 * p["alpha"] * p["bw"] ** 2)) ** (-p["alpha"])
    if name == "energy":
        return -D
    if name == "poly":
        return (p["gamma"] * T + p["c"]) ** p["deg"]
    if name == "linear":
        return T
    if name == "sum_gl":
        return np.exp(-D2 / (2 * 0.7**2)) + np.exp(-D / 1.3)
    if name == "scaled_imq":
        return 2.5 * (1 + D2 / 1.5**2) ** -0.5
    raise KeyError(name)


def grad_x(name, X, Y, p):
    """G[i, j, :] = grad_x k(x_i, y_j), from hand-derived formulas."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    diff = X[:, None, :] - Y[None, :, :]
    D2 = (diff**2).sum(-1)
    D = np.sqrt(D2)
    Dsafe = np.where(D == 0, 1.0, D)
    T = X @ Y.T
    if name == "gaussian":
        return -diff / p["bw"] ** 2 * np.exp(-D2 / (2 * p["bw"] ** 2))[..., None]
    if name == "mixture":
        return sum(
            -w * diff / b**2 * np.exp(-D2 / (2 * b**2))[..., None]
            for b, w in zip(p["bws"], p["ws"], strict=True)
        )
    if name == "imq":
        c, beta = p["c"], p["beta"]
        return (beta * (1 + D2 / c**2) ** (beta - 1) * 2 / c**2)[..., None] * diff
    if name == "laplace":
        return -(np.exp(-D / p["bw"]) / (p["bw"] * Dsafe))[..., None] * diff * (D > 0)[..., None]
    if name == "rq":
        a, bw = p["alpha"], p["bw"]
        return -((1 + D2 / (2 * a * bw**2)) ** (-a - 1) / bw**2)[..., None] * diff
    if name == "energy":
        return -diff / Dsafe[..., None] * (D > 0)[..., None]
    if name == "poly":
        g = p["deg"] * p["gamma"] * (p["gamma"] * T + p["c"]) ** (p["deg"] - 1)
        return g[..., None] * Y[None, :, :]
    if name == "linear":
        return np.broadcast_to(Y[None, :, :], diff.shape)
    if name == "sum_gl":
        return grad_x("gaussian", X, Y, {"bw": 0.7}) + grad_x("laplace", X, Y, {"bw": 1.3})
    if name == "scaled_imq":
        return 2.5 * grad_x("imq", X, Y, {"c": 1.5, "beta": -0.5})
    raise KeyError(name)


def mmd2(Kxx, Kyy, Kxy, a, b, estimator):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / a.sum()
    b = b / b.sum()
    if estimator == "biased":
        return a @ Kxx @ a + b @ Kyy @ b - 2 * a @ Kxy @ b
    # weighted U-statistic: drop diagonals, renormalise the off-diagonal mass
    n, m = len(a), len(b)
    oxx = sum(a[i] * a[j] * Kxx[i, j] for i in range(n) for j in range(n) if i != j)
    oyy = sum(b[i] * b[j] * Kyy[i, j] for i in range(m) for j in range(m) if i != j)
    mxx = sum(a[i] * a[j] for i in range(n) for j in range(n) if i != j)
    myy = sum(b[i] * b[j] for i in range(m) for j in range(m) if i != j)
    return oxx / mxx + oyy / myy - 2 * a @ Kxy @ b
