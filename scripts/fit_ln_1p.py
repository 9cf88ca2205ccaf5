#!/usr/bin/env python3
"""Fits the polynomial behind softplus' ln(1 + e) for e in [0, 1] in
crates/diffusion-kernels/src/math.rs (`ln_1p_unit`): P(u), u = e - 1/2, of degree 9, so that
ln(1 + e) = e P(e - 1/2) to log1p's relative accuracy. Chebyshev least squares on [0, 1] in
f64, turned into monomials in u and rounded to f32; then the f32 evaluation (Horner with fused
multiply-adds, as the kernels run it) checked against f64 log1p on a dense grid.

    python3 scripts/fit_ln_1p.py [--degree 9]

Prints the coefficients from the highest power down (the order of the kernel's Horner loop)
as the shortest decimals that round to them, and the largest error in f32 ulp.
"""

import argparse

import numpy as np
from numpy.polynomial import chebyshev


def target(e):
    """ln(1 + e) / e, 1 at e = 0."""
    out = np.ones_like(e)
    m = e > 0
    out[m] = np.log1p(e[m]) / e[m]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--degree", type=int, default=9)
    degree = ap.parse_args().degree
    # Chebyshev nodes of [-1, 1], t = 2e - 1 = 2u
    nodes = np.cos(np.pi * (np.arange(4000) + 0.5) / 4000)
    c = chebyshev.chebfit(nodes, target((nodes + 1) / 2), degree)
    in_u = chebyshev.cheb2poly(c) * 2.0 ** np.arange(degree + 1)
    coeffs = in_u.astype(np.float32)
    print("coefficients, highest power first:")
    for v in coeffs[::-1]:
        print(f"    {np.format_float_positional(v, unique=True)},")

    e = np.linspace(0.0, 1.0, 400_001).astype(np.float32)
    u = e - np.float32(0.5)
    acc = np.full_like(u, coeffs[-1])
    for k in range(degree - 1, -1, -1):
        # a fused multiply-add: exact product and sum, one rounding
        acc = (acc.astype(np.float64) * u + np.float64(coeffs[k])).astype(np.float32)
    got = (acc * e).astype(np.float64)
    exact = np.log1p(e.astype(np.float64))
    m = e > 0
    ulp = np.spacing(exact[m].astype(np.float32)).astype(np.float64)
    err = np.abs(got[m] - exact[m]) / ulp
    print(f"largest error on the grid: {err.max():.2f} ulp (mean {err.mean():.3f})")


if __name__ == "__main__":
    main()
