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


def cross_hess(name, X, Y, p):
    """H[i, j, a, b] = d^2 k(x_i, y_j) / dx_a dy_b, from hand-derived formulas in the distance
    D = |x - y| (or t = x.y); kernels with a cusp at x = y give 0 there."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    d = X.shape[1]
    diff = X[:, None, :] - Y[None, :, :]
    rr = diff[..., :, None] * diff[..., None, :]  # r_a r_b
    eye = np.eye(d)
    D2 = (diff**2).sum(-1)
    D = np.sqrt(D2)
    Ds = np.where(D == 0, 1.0, D)
    T = X @ Y.T

    def comb(diag, outer):  # diag * delta_ab + outer * r_a r_b
        return diag[..., None, None] * eye + outer[..., None, None] * rr

    if name == "gaussian":
        K = np.exp(-D2 / (2 * p["bw"] ** 2))
        return comb(K / p["bw"] ** 2, -K / p["bw"] ** 4)
    if name == "mixture":
        return sum(
            w * cross_hess("gaussian", X, Y, {"bw": b})
            for b, w in zip(p["bws"], p["ws"], strict=True)
        )
    if name == "imq":
        c, beta = p["c"], p["beta"]
        u = 1 + D2 / c**2
        return comb(
            -2 * beta / c**2 * u ** (beta - 1), -4 * beta * (beta - 1) / c**4 * u ** (beta - 2)
        )
    if name == "rq":
        a, bw = p["alpha"], p["bw"]
        u = 1 + D2 / (2 * a * bw**2)
        return comb(u ** (-a - 1) / bw**2, -(a + 1) / (a * bw**4) * u ** (-a - 2))
    if name == "laplace":
        b = p["bw"]
        K = np.exp(-D / b)
        H = comb(K / (b * Ds), -K * (1 / (b**2 * Ds**2) + 1 / (b * Ds**3)))
        return H * (D > 0)[..., None, None]
    if name == "energy":
        return comb(1 / Ds, -1 / Ds**3) * (D > 0)[..., None, None]
    if name == "poly":
        deg, g, c = p["deg"], p["gamma"], p["c"]
        u = g * T + c
        yx = Y[None, :, :, None] * X[:, None, None, :]  # y_a x_b
        return (deg * g * u ** (deg - 1))[..., None, None] * eye + (
            deg * (deg - 1) * g**2 * u ** (deg - 2)
        )[..., None, None] * yx
    if name == "linear":
        return np.broadcast_to(eye, (*T.shape, d, d))
    if name == "sum_gl":
        return cross_hess("gaussian", X, Y, {"bw": 0.7}) + cross_hess("laplace", X, Y, {"bw": 1.3})
    if name == "scaled_imq":
        return 2.5 * cross_hess("imq", X, Y, {"c": 1.5, "beta": -0.5})
    raise KeyError(name)
