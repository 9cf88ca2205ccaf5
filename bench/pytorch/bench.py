#!/usr/bin/env python3
"""The PyTorch reference for `cargo xtask bench`: exactly the models, losses and workloads that
`diffusion bench` times, written the way a PyTorch user would (everything in torch ops, the
per-step tables gathered by t), printing one JSON line with the same keys.

Models:
  roll       configs/swiss_roll_presentation.toml: 2 -> 128 -> 128 -> 4, softplus, a learned
             per-step embedding added before each activation, `direct` parametrization, T = 100,
             linear betas 1e-4..0.1, Adam 1e-3, the Monte-Carlo bound (t ~ U{2..T}, KL x (T-1)).
  heartbeat  configs/heartbeat_paper_model.toml: binomial diffusion on 20-bit heartbeats, T = 2000,
             pi = 0.2, b_t = 1/(T-t+1); sigmoid MLP 20 -> 50 -> 50 -> 50 with one readout per step,
             logits offset by the forward kernel's (`paper` parametrization), Adam 1e-3.
Workloads: train (steps/s, examples/s), sample (points x steps / s), evaluate (full sum over t,
rows / s), matmul (the f32 matrix-product rate of the BLAS, GFLOP/s: a square product of side
--side and [4096 x 128] x [128 x 128]); peak resident memory from the kernel (ru_maxrss).
`--compile` trains with the loss under `torch.compile` (inductor; its compilation runs in the
untimed warm-up steps).
"""

import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


# ---------------------------------------------------------------- Gaussian: the Swiss roll
class RollModel(torch.nn.Module):
    def __init__(self, steps, hidden=128):
        super().__init__()
        self.l1 = torch.nn.Linear(2, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.e1 = torch.nn.Embedding(steps + 1, hidden)
        self.e2 = torch.nn.Embedding(steps + 1, hidden)
        self.out = torch.nn.Linear(hidden, 4)
        torch.nn.init.normal_(self.e1.weight, std=0.1)
        torch.nn.init.normal_(self.e2.weight, std=0.1)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, x, t):
        h = F.softplus(self.l1(x) + self.e1(t))
        h = F.softplus(self.l2(h) + self.e2(t))
        return self.out(h)


class Roll:
    steps = 100

    def __init__(self):
        T = self.steps
        b = torch.linspace(1e-4, 0.1, T, dtype=torch.float64)
        beta = torch.cat([torch.zeros(1, dtype=torch.float64), b])  # index t = 1..T
        abar = torch.cumprod(1 - beta, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.beta = beta.float()
        self.sqrt_abar = abar.sqrt().float()
        self.sqrt_1m_abar = (1 - abar).sqrt().float()
        safe = (1 - abar).clamp_min(1e-300)
        self.c0 = (abar_prev.sqrt() * beta / safe).float()
        self.ct = ((1 - beta).sqrt() * (1 - abar_prev) / safe).float()
        var = (beta * (1 - abar_prev) / safe).clamp_min(1e-300)
        self.post_var = var.float()
        self.post_logvar = var.log().float()
        self.constant = 0.0  # the entropy terms: constant in the parameters
        self.model = RollModel(T)

    def data(self, n):
        s = 1.5 * math.pi + 3.0 * math.pi * torch.rand(n)
        x = torch.stack([s * torch.cos(s), s * torch.sin(s)], 1) + 0.5 * torch.randn(n, 2)
        return x / 7.0

    def kl_rows(self, x0, t):
        eps = torch.randn_like(x0)
        xt = self.sqrt_abar[t, None] * x0 + self.sqrt_1m_abar[t, None] * eps
        mu_q = self.c0[t, None] * x0 + self.ct[t, None] * xt
        z = self.model(xt, t)
        mu_p, logvar_p = z[:, :2], z[:, 2:]
        ratio = ((mu_q - mu_p) ** 2 + self.post_var[t, None]) * torch.exp(-logvar_p)
        return 0.5 * (logvar_p - self.post_logvar[t, None] + ratio - 1).sum(1)

    def sample(self, n):
        x = torch.randn(n, 2)
        for t in range(self.steps, 1, -1):
            tt = torch.full((n,), t, dtype=torch.long)
            z = self.model(x, tt)
            x = z[:, :2] + torch.exp(0.5 * z[:, 2:]) * torch.randn(n, 2)
        b1 = float(self.beta[1])
        return x * math.sqrt(1 - b1) + math.sqrt(b1) * torch.randn(n, 2)


# ---------------------------------------------------------------- binomial: the heartbeat
class HeartbeatModel(torch.nn.Module):
    def __init__(self, steps, d=20, hidden=50):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            [torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, hidden)]
        )
        self.w = torch.nn.Parameter(torch.zeros(steps + 1, hidden, d))
        self.b = torch.nn.Parameter(torch.zeros(steps + 1, d))

    def forward(self, x, t):
        h = x
        for layer in self.layers:
            h = torch.sigmoid(layer(h))
        return torch.bmm(h.unsqueeze(1), self.w[t]).squeeze(1) + self.b[t]


class Beat:
    steps, d, period, pi = 2000, 20, 5, 0.2

    def __init__(self):
        T = self.steps
        beta = torch.tensor([0.0] + [1.0 / (T - t + 1) for t in range(1, T + 1)], dtype=torch.float64)
        abar = torch.cumprod(1 - beta, 0)
        self.beta = beta.float()
        self.abar = abar.float()
        seqs = torch.zeros(self.period, self.d)
        for p in range(self.period):
            seqs[p, p :: self.period] = 1.0
        self.seqs = seqs
        self.constant = 0.0
        self.model = HeartbeatModel(T)

    def data(self, n):
        return self.seqs[torch.randint(0, self.period, (n,))]

    def kernel_logit(self, xt, t):
        b = self.beta[t, None]
        p = xt * (1 - b) + self.pi * b
        return torch.log(p) - torch.log1p(-p)

    def kl_rows(self, x0, t):
        pi = self.pi
        a, a_prev, b = self.abar[t, None], self.abar[t - 1, None], self.beta[t, None]
        xt = (torch.rand_like(x0) < x0 * a + pi * (1 - a)).float()
        p1 = x0 * a_prev + pi * (1 - a_prev)
        l1 = torch.where(xt > 0.5, 1 - b + pi * b, b * (1 - pi))
        l0 = torch.where(xt > 0.5, pi * b, 1 - pi * b)
        q = p1 * l1 / (p1 * l1 + (1 - p1) * l0)
        neg_h = torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q)
        logits = self.model(xt, t) + self.kernel_logit(xt, t)
        cross = q * F.logsigmoid(logits) + (1 - q) * F.logsigmoid(-logits)
        return (neg_h - cross).sum(1)

    def sample(self, n):
        x = (torch.rand(n, self.d) < self.pi).float()
        for t in range(self.steps, 1, -1):
            tt = torch.full((n,), t, dtype=torch.long)
            logits = self.model(x, tt) + self.kernel_logit(x, tt)
            x = (torch.rand(n, self.d) < torch.sigmoid(logits)).float()
        b1 = float(self.beta[1])
        return (torch.rand(n, self.d) < x * (1 - b1) + self.pi * b1).float()


def loss(problem, x0):
    n = x0.shape[0]
    t = torch.randint(2, problem.steps + 1, (n,))
    return problem.kl_rows(x0, t).mean() * (problem.steps - 1) / LN2 - problem.constant


def gflops(m, k, n, sync):
    """The best rate of [m, k] x [k, n] f32 products over 3 timed rounds, GFLOP/s."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    flop = 2.0 * m * k * n
    repeat = max(3, int(2e10 / flop))
    a @ b
    best = float("inf")
    for _ in range(3):
        sync()
        start = time.perf_counter()
        for _ in range(repeat):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / repeat)
    return flop / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=["train", "sample", "evaluate", "matmul"], required=True)
    ap.add_argument("--model", choices=["roll", "heartbeat"], default="roll")
    ap.add_argument("--compile", action="store_true", help="train with torch.compile of the loss")
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_default_device(a.device)
    torch.manual_seed(0)

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    problem = Roll() if a.model == "roll" else Beat()
    out = {
        "workload": a.workload,
        "model": a.model,
        "backend": f"pytorch {torch.__version__}",
        "steps_t": problem.steps,
        "threads": a.threads,
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU",
    }
    if a.workload == "matmul":
        out.pop("model"), out.pop("steps_t")
        out.update(side=a.side, square_gflops=gflops(a.side, a.side, a.side, sync),
                   layer_gflops=gflops(4096, 128, 128, sync))
    elif a.workload == "train":
        opt = torch.optim.Adam(problem.model.parameters(), lr=1e-3)
        objective = torch.compile(loss) if a.compile else loss
        if a.compile:
            out["backend"] += " compile"

        def step():
            value = objective(problem, problem.data(a.batch_size))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            return value.item()  # the Rust loop reads the loss every step too

        for _ in range(10):
            step()
        start = time.perf_counter()
        for _ in range(a.steps):
            step()
        seconds = time.perf_counter() - start
        out.update(
            batch=a.batch_size,
            steps=a.steps,
            seconds=seconds,
            steps_per_s=a.steps / seconds,
            examples_per_s=a.steps * a.batch_size / seconds,
        )
    elif a.workload == "sample":
        with torch.no_grad():
            start = time.perf_counter()
            x = problem.sample(a.n)
            sync()
            seconds = time.perf_counter() - start
        assert torch.isfinite(x).all()
        out.update(n=a.n, seconds=seconds, point_steps_per_s=a.n * problem.steps / seconds)
    else:
        with torch.no_grad():
            points = problem.data(a.n)
            T = problem.steps
            rows = a.n * (T - 1)
            chunk = 16384
            start = time.perf_counter()
            total = 0.0
            for lo in range(0, rows, chunk):
                r = torch.arange(lo, min(lo + chunk, rows))
                total += problem.kl_rows(points[r // (T - 1)], 2 + r % (T - 1)).sum().item()
            seconds = time.perf_counter() - start
        out.update(n=a.n, seconds=seconds, rows_per_s=rows / seconds)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
