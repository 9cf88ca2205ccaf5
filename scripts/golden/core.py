#!/usr/bin/env python3
"""Golden numbers for diffusion-core's schedules, Gaussian and binomial processes and
diffusion-data's Swiss roll constants (scripts/golden/core.json).

An independent float64 NumPy computation from the formulas of the project's spec (SPEC.md
sections 1-3), cited by the unit tests in crates/diffusion-core/src/{schedule,gaussian,binomial}.rs
and crates/diffusion-data/src/swiss_roll.rs:

- beta schedules, t = 1..T: `cosine` (s = 0.008, b_t = min(1 - abar_t / abar_{t-1}, 0.999), t/T in
  floating point), `paper` (the original code's generate_beta_arr: base_t = 1 / linspace(T, 2, T),
  m_t = 1e-6 plus 0.001 at t = 1, b_t = m_t + base_t (1 - m_t - 1e-5)) and `linear(1e-4, 0.1)`:
  b_1..b_3, the middle beta b[T // 2] (0-based), b_T and abar_T = prod (1 - b_t);
- the Gaussian posterior q(x_{t-1} | x_t, x_0) on linear(1e-4, 0.1), T = 100, at t = 50 and t = 2;
- the Gaussian bound's entropy terms and L_null in bits, d = 2, on that schedule;
- binomial diffusion, T = 2000, pi = 0.2, b_t = 1 / (T - t + 1): abar_1000 (cumulative product)
  and the posterior q(x_{t-1} = 1 | x_t, x_0) at t = 500 and t = 2;
- the binary heartbeat (20 bits, a 1 every 5th bin, the x_0 with its first pulse at bin 2):
  H_q(X_1 | X_0), H_p(X_T) = 20 h(pi), L_null = -H_p(X_T) and -H(data) = -log2 5, in bits;
- the Swiss roll (s = 1.5 pi (1 + 2u), u ~ U(0, 1), point (s cos s, s sin s) + N(0, noise^2 I)):
  the raw mean and the normalising scale sqrt(mean per-coordinate variance), in closed form.

Not reproduced: the Swiss roll data entropies and their standard errors (`data_entropy_bits`,
`data_entropy_stderr_bits` in the shared golden.json) are Monte Carlo estimates whose sample
size, seed and random generator the spec does not define, so they are left out.

    python3 scripts/golden/core.py > scripts/golden/core.json
"""
import json

import numpy as np

LN2 = np.log(2.0)


# ---- beta schedules (index 0 is t = 1) ----

def cosine_betas(T, s=0.008, max_beta=0.999):
    t = np.arange(T + 1, dtype=np.float64)
    f = np.cos((t / T + s) / (1.0 + s) * np.pi / 2.0) ** 2
    abar = f / f[0]
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def paper_betas(T, min_beta=1e-6, max_beta_gap=1e-5, step1_beta=0.001):
    base = 1.0 / np.linspace(T, 2.0, T)
    m = np.full(T, min_beta)
    m[0] += step1_beta
    return m + base * (1.0 - m - max_beta_gap)


def linear_betas(T, start, end):
    return np.linspace(start, end, T, dtype=np.float64)


def schedule_entry(b):
    T = len(b)
    return {
        "T": T,
        "beta_first3": [float(v) for v in b[:3]],
        "beta_mid": float(b[T // 2]),
        "beta_last": float(b[-1]),
        "abar_last": float(np.prod(1.0 - b)),
    }


# ---- Gaussian diffusion ----

def gaussian_posterior(b, t, x0, xt):
    """Mean and variance of q(x_{t-1} | x_t, x_0), t 1-based."""
    abar = np.concatenate([[1.0], np.cumprod(1.0 - b)])
    bt, ab_t, ab_prev = b[t - 1], abar[t], abar[t - 1]
    mean = (np.sqrt(ab_prev) * bt / (1.0 - ab_t) * x0
            + np.sqrt(1.0 - bt) * (1.0 - ab_prev) / (1.0 - ab_t) * xt)
    var = (1.0 - ab_prev) / (1.0 - ab_t) * bt
    return float(mean), float(var)


def gaussian_entropy_bits(b, d):
    abar_T = np.prod(1.0 - b)
    h = lambda v: d / 2.0 * (1.0 + np.log(2.0 * np.pi * v)) / LN2
    return {
        "H_q_XT_given_X0": float(h(1.0 - abar_T)),
        "H_q_X1_given_X0": float(h(b[0])),
        "H_p_XT": float(h(1.0)),
        "L_null": float(-d / 2.0 * np.log2(2.0 * np.pi * np.e)),
    }


# ---- binomial diffusion ----

def reciprocal_betas(T):
    t = np.arange(1, T + 1, dtype=np.float64)
    return 1.0 / (T - t + 1.0)


def binomial_abar(b):
    return np.concatenate([[1.0], np.cumprod(1.0 - b)])


def binomial_posterior_one(b, pi, t, x0, xt):
    """q(x_{t-1} = 1 | x_t, x_0), t 1-based."""
    abar = binomial_abar(b)
    bt = b[t - 1]
    p1 = x0 * abar[t - 1] + pi * (1.0 - abar[t - 1])
    if xt == 1:
        num = p1 * (1.0 - bt + pi * bt)
        return float(num / (num + (1.0 - p1) * pi * bt))
    num = p1 * bt * (1.0 - pi)
    return float(num / (num + (1.0 - p1) * (1.0 - pi * bt)))


def h_bits(p):
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(p) + (1.0 - p) * np.log(1.0 - p)) / LN2


# ---- Swiss roll ----

def swiss_roll_constants(noise):
    a, c = 1.5 * np.pi, 4.5 * np.pi  # s ~ U(a, c)
    # antiderivatives: s cos s -> s sin s + cos s; s sin s -> sin s - s cos s; s^2 -> s^3 / 3
    mx = ((c * np.sin(c) + np.cos(c)) - (a * np.sin(a) + np.cos(a))) / (c - a)
    my = ((np.sin(c) - c * np.cos(c)) - (np.sin(a) - a * np.cos(a))) / (c - a)
    es2 = (c ** 3 - a ** 3) / (3.0 * (c - a))  # E|p|^2 = E s^2
    var = (es2 - mx * mx - my * my) / 2.0 + noise * noise
    return {"mean_raw": [float(mx), float(my)], "scale": float(np.sqrt(var))}


def main():
    out = {
        "cosine_T1000": schedule_entry(cosine_betas(1000)),
        "paper_T40": schedule_entry(paper_betas(40)),
        "paper_T1000": schedule_entry(paper_betas(1000)),
        "linear_T100_1e-4_0.1": schedule_entry(linear_betas(100, 1e-4, 0.1)),
    }
    lin = linear_betas(100, 1e-4, 0.1)
    for t in (50, 2):
        m, v = gaussian_posterior(lin, t, 0.7, -0.3)
        out[f"gaussian_posterior_linear_T100_t{t}_x0_0.7_xt_-0.3"] = {"mean": m, "var": v}
    out["gaussian_entropy_terms_bits_linear_T100_d2"] = gaussian_entropy_bits(lin, 2)

    T, pi = 2000, 0.2
    b = reciprocal_betas(T)
    entry = {"abar_t1000": float(binomial_abar(b)[1000])}
    for t in (500, 2):
        entry[f"posterior_t{t}"] = {
            f"x0={x0},xt={xt}": binomial_posterior_one(b, pi, t, x0, xt)
            for x0 in (0, 1) for xt in (0, 1)
        }
    out["binomial_T2000_pi0.2"] = entry

    x0 = np.zeros(20)
    x0[2::5] = 1.0
    q1 = x0 * (1.0 - b[0]) + pi * b[0]  # q(x_1 = 1 | x_0), abar_1 = 1 - b_1
    h_pT = 20 * h_bits(pi)
    out["heartbeat_T2000_pi0.2"] = {
        "H_q_X1_given_X0_bits": float(np.sum(h_bits(q1))),
        "H_p_XT_bits": float(h_pT),
        "L_null_bits": float(-h_pT),
        "neg_data_entropy_bits": float(-np.log2(5.0)),
    }

    for noise in (0.5, 0.05):
        out[f"swiss_roll_noise_{noise}"] = swiss_roll_constants(noise)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
