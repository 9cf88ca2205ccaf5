#!/usr/bin/env python3
"""Golden numbers for diffusion-core's DDIM step (crates/diffusion-core/tests/ddim_golden.json).

An independent float64 NumPy transcription of diffusers' DDIMScheduler (set_timesteps and step:
timestep_spacing leading / trailing / linspace, clip_sample, set_alpha_to_one, prediction_type
epsilon / sample, eta), run on a dummy model out(x, t) = sin(x) (t + 1) / T + 0.1 x over a linear
beta schedule, with fixed "noise" z_k[i] = cos(1.3 k + 0.7 i) where eta > 0.

    python3 scripts/golden/ddim.py > crates/diffusion-core/tests/ddim_golden.json
"""
import json

import numpy as np

T = 50
betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
alphas_cumprod = np.cumprod(1.0 - betas)
x_T = np.array([-1.5, -0.2, 0.3, 1.1, 2.4], dtype=np.float64)


def timesteps(spacing, k):
    if spacing == "linspace":
        return np.linspace(0, T - 1, k).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = T // k
        return (np.arange(0, k) * ratio).round()[::-1].copy().astype(np.int64)
    if spacing == "trailing":
        ratio = T / k
        return np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
    raise ValueError(spacing)


def model(x, t):
    return np.sin(x) * (t + 1) / T + 0.1 * x


def run(case):
    k, eta = case["steps"], case["eta"]
    final = 1.0 if case["set_alpha_to_one"] else alphas_cumprod[0]
    x = x_T.copy()
    ts = timesteps(case["timestep_spacing"], k)
    for n, t in enumerate(ts):
        out = model(x, t)
        prev_t = t - T // k
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[prev_t] if prev_t >= 0 else final
        b_t = 1 - a_t
        if case["prediction_type"] == "epsilon":
            x0 = (x - b_t ** 0.5 * out) / a_t ** 0.5
            eps = out
        else:
            x0 = out
            eps = (x - a_t ** 0.5 * x0) / b_t ** 0.5
        if case["clip_sample"]:
            x0 = np.clip(x0, -case["clip_sample_range"], case["clip_sample_range"])
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        std = eta * variance ** 0.5
        direction = (1 - a_prev - std ** 2) ** 0.5 * eps
        x = a_prev ** 0.5 * x0 + direction
        if eta > 0:
            z = np.cos(1.3 * n + 0.7 * np.arange(len(x)))
            x = x + std * z
    return [int(t) for t in ts], [float(v) for v in x]


CASES = [
    dict(steps=10, eta=0.0, timestep_spacing="leading", prediction_type="epsilon",
         clip_sample=False, clip_sample_range=1.0, set_alpha_to_one=True),
    dict(steps=7, eta=0.0, timestep_spacing="trailing", prediction_type="sample",
         clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=False),
    dict(steps=8, eta=0.5, timestep_spacing="linspace", prediction_type="epsilon",
         clip_sample=False, clip_sample_range=1.0, set_alpha_to_one=True),
    dict(steps=50, eta=1.0, timestep_spacing="leading", prediction_type="epsilon",
         clip_sample=True, clip_sample_range=2.0, set_alpha_to_one=True),
]

out = {"alphas_cumprod": [float(v) for v in alphas_cumprod], "x_T": [float(v) for v in x_T],
       "cases": []}
for c in CASES:
    ts, x = run(c)
    out["cases"].append(dict(c, timesteps=ts, x_0=x))
print(json.dumps(out, indent=1))
