#!/usr/bin/env python3
"""Writes the Swiss roll in its raw units (not centred, not scaled), optionally shifted, for
checking that a run on a user's file reports the bound in the file's own units (README, "Your
own data"). Prints the file's -H(data) in bits per point: the generator's (from
`diffusion evaluate` on a generator run) minus 2 log2 c, c the generator's exact scale.

    python3 scripts/raw-swiss-roll.py OUT.npy [--n 20000] [--shift 30,-20] [--seed 0]
        [--neg-entropy-scaled BITS]
"""

import argparse
import math

import numpy as np

S_LO, S_HI, NOISE = 1.5 * math.pi, 4.5 * math.pi, 0.5


def scale():
    """The generator's exact scale constant (crates/diffusion-data/src/swiss_roll.rs)."""
    length = S_HI - S_LO
    mx = ((S_HI * math.sin(S_HI) + math.cos(S_HI)) - (S_LO * math.sin(S_LO) + math.cos(S_LO))) / length
    my = ((math.sin(S_HI) - S_HI * math.cos(S_HI)) - (math.sin(S_LO) - S_LO * math.cos(S_LO))) / length
    es2 = (S_HI**3 - S_LO**3) / (3.0 * length)
    return math.sqrt((es2 - mx * mx - my * my) / 2.0 + NOISE * NOISE)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--shift", default="0,0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neg-entropy-scaled", type=float, default=None)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    s = S_LO + (S_HI - S_LO) * rng.random(a.n)
    x = np.stack([s * np.cos(s), s * np.sin(s)], axis=1) + NOISE * rng.standard_normal((a.n, 2))
    x += np.array([float(v) for v in a.shift.split(",")])
    np.save(a.out, x.astype(np.float32))
    c = scale()
    print(f"wrote {a.out}: {a.n} points; generator scale c = {c:.6f}, 2 log2 c = {2 * math.log2(c):.4f}")
    if a.neg_entropy_scaled is not None:
        print(f"-H(data) in raw units = {a.neg_entropy_scaled - 2 * math.log2(c):.4f} bits/point")


if __name__ == "__main__":
    main()
