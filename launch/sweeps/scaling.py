"""Scaling-law fits: a metric as a power law of the number of training images.

Two forms, both fitted with scipy.optimize.curve_fit in the metric's own units (so the
residuals are errors on the metric, not on its logarithm):

  power:       y = a * n**b                    (2 parameters; needs >= 3 sizes)
  saturating:  y = c - a * n**(-b)             (3 parameters; an error metric falling or a
                                                score rising towards c; needs >= 4 sizes)

Each form needs one size more than it has parameters: through as many points as parameters
a curve always passes exactly, so such a "fit" says nothing about the law (R² = 1, no
errors). Standard errors are the square roots of the diagonal of curve_fit's covariance.

Whether to fit at all is `no_fit_reason`'s call (the study's plots and `sweep report` both ask it):
a curve through points whose CIs overlap end to end would report noise as a law.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

FORMS = ("power", "saturating")


@dataclass(frozen=True)
class PowerLawFit:
    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    n_points: int
    r2: float

    @property
    def exponent(self) -> float:
        return self.params["b"]

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return _model(self.form)(np.asarray(n, dtype=float), *self.params.values())

    def formula(self) -> str:
        p, e = self.params, self.stderr

        def pm(k: str) -> str:
            v = 0.0 if abs(p[k]) < 1e-9 else p[k]  # round-off of a flat fit
            return f"{v:.4g}" if math.isnan(e[k]) else f"({v:.4g} ± {e[k]:.2g})"

        if self.form == "power":
            return f"y = {pm('a')} · n^{pm('b')}"
        return f"y = {pm('c')} − {pm('a')} · n^−{pm('b')}"


def _power(n: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * np.power(n, b)


def _saturating(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return c - a * np.power(n, -b)


def _model(form: str):
    return {"power": _power, "saturating": _saturating}[form]


def min_sizes(form: str) -> int:
    """Distinct sizes a fit of `form` needs: one more than its parameters, so it can be wrong."""
    return {"power": 3, "saturating": 4}[form]


def no_fit_reason(images, values, lo, hi, min_fit_points: int = 3) -> str | None:
    """Why a law through these points would mean nothing (None: it may be fitted and drawn), the
    one rule of the study and the sweep report: fewer than `min_fit_points` sizes, a point without
    a CI (`lo`/`hi` None: the noise is unknown), a value <= 0 (no power law reaches it), or a
    smallest and a largest size whose CIs overlap (the trend cannot be told from flat)."""
    if len(set(images)) < min_fit_points:
        return f"{len(set(images))} sizes"
    if any(v is None for v in (*lo, *hi)):
        return "no CIs"
    if any(v <= 0 for v in values):
        return "values <= 0"
    small, large = images.index(min(images)), images.index(max(images))
    if lo[large] <= hi[small] and lo[small] <= hi[large]:
        return "CIs overlap"
    return None


def fit_power_law(n, y, form: str = "power") -> PowerLawFit:
    """Fit y(n). Raises ValueError when the points cannot determine the form's parameters."""
    from scipy.optimize import OptimizeWarning, curve_fit

    if form not in FORMS:
        raise ValueError(f"unknown fit form '{form}': use one of {', '.join(FORMS)}")
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(n) & np.isfinite(y) & (n > 0)
    n, y = n[ok], y[ok]
    need = min_sizes(form)
    if len(np.unique(n)) < need:
        raise ValueError(f"too few sizes for a {form} fit: {len(np.unique(n))} distinct, it needs >= {need}")
    # start from the straight line in log-log space (exact for a noiseless power law)
    if form == "power":
        sign = 1.0 if np.all(y > 0) else (-1.0 if np.all(y < 0) else 0.0)
        if sign != 0.0:
            b0, loga = np.polyfit(np.log(n), np.log(sign * y), 1)
            p0 = [sign * math.exp(loga), b0]
        else:
            p0 = [float(np.mean(y)), 0.0]
        names = ("a", "b")
    else:
        span = float(np.ptp(y)) or 1.0
        rising = y[np.argmax(n)] >= y[np.argmin(n)]
        c0 = float(np.max(y) + 0.1 * span) if rising else float(np.min(y) - 0.1 * span)
        gap = np.abs(c0 - y)
        b0, loga = np.polyfit(np.log(n), np.log(gap), 1)
        p0 = [math.copysign(math.exp(loga), 1.0 if rising else -1.0), max(-b0, 1e-3), c0]
        names = ("a", "b", "c")
    with warnings.catch_warnings():
        # as many points as parameters: curve_fit warns that it cannot estimate errors (NaN below)
        warnings.simplefilter("ignore", OptimizeWarning)
        params, cov = curve_fit(_model(form), n, y, p0=p0, maxfev=20000)
    with np.errstate(invalid="ignore"):
        err = np.sqrt(np.diag(cov)) if np.all(np.isfinite(cov)) else np.full(len(params), np.nan)
    resid = y - _model(form)(n, *params)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    return PowerLawFit(form, dict(zip(names, map(float, params))), dict(zip(names, map(float, err))), len(n), r2)
