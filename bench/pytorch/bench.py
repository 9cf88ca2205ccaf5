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
  mnist      configs/mnist.toml: Gaussian diffusion on 28x28 MNIST digits (datasets/mnist), T = 1000,
             cosine betas, improved diffusion's U-Net (16 channels, multipliers 1, 2, 2, one
             residual block a level, attention at 7x7, GroupNorm of 8 groups, SiLU), noise
             prediction with a learned variance (`epsilon`), the hybrid loss (noise error plus
             0.001 x the Monte-Carlo bound with the mean held fixed), Adam.
  mnist_paper configs/mnist_paper.toml: the same digits with the paper's multi-scale network
             (PaperNet), schedule and parametrization, the Monte-Carlo bound, Adam.
Workloads: train (steps/s, examples/s), sample (points x steps / s; for mnist images x steps / s
of every step of the chain), evaluate (full sum over t,
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


# ---------------------------------------------------------------- images: MNIST and a U-Net
def group_norm(c):
    return torch.nn.GroupNorm(8, c)


def zero(module):
    torch.nn.init.zeros_(module.weight)
    torch.nn.init.zeros_(module.bias)
    return module


class ResBlock(torch.nn.Module):
    def __init__(self, cin, cout, emb):
        super().__init__()
        self.norm_in, self.conv_in = group_norm(cin), torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.time = torch.nn.Linear(emb, cout)
        self.norm_out = group_norm(cout)
        self.conv_out = zero(torch.nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = torch.nn.Conv2d(cin, cout, 1) if cin != cout else torch.nn.Identity()

    def forward(self, x, emb):
        h = self.conv_in(F.silu(self.norm_in(x)))
        h = h + self.time(F.silu(emb))[:, :, None, None]
        return self.skip(x) + self.conv_out(F.silu(self.norm_out(h)))


class Attention(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm, self.qkv, self.out = group_norm(c), torch.nn.Conv2d(c, 3 * c, 1), zero(torch.nn.Conv2d(c, c, 1))

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3 * c, h * w).split(c, dim=1)
        scale = 1 / math.sqrt(math.sqrt(c))
        weights = torch.softmax((q * scale).transpose(1, 2) @ (k * scale), dim=2)
        return x + self.out((v @ weights.transpose(1, 2)).reshape(n, c, h, w))


class UNet(torch.nn.Module):
    """The network `UnetConfig` plans in crates/diffusion-models/src/image/unet.rs."""

    def __init__(self, channels=16, mult=(1, 2, 2), res_blocks=1, attention=(7,), side=28):
        super().__init__()
        mc, emb = channels, 4 * channels
        self.width = mc
        self.time = torch.nn.Sequential(torch.nn.Linear(mc, emb), torch.nn.SiLU(), torch.nn.Linear(emb, emb))
        self.input = torch.nn.Conv2d(1, mc, 3, padding=1)
        ch, skips, self.down = mc, [mc], torch.nn.ModuleList()
        for level, m in enumerate(mult):
            for _ in range(res_blocks):
                block = torch.nn.ModuleList([ResBlock(ch, mc * m, emb)])
                ch = mc * m
                if side >> level in attention:
                    block.append(Attention(ch))
                self.down.append(block)
                skips.append(ch)
            if level + 1 < len(mult):
                self.down.append(torch.nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.middle = torch.nn.ModuleList([ResBlock(ch, ch, emb), Attention(ch), ResBlock(ch, ch, emb)])
        self.up = torch.nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for _ in range(res_blocks + 1):
                block = torch.nn.ModuleList([ResBlock(ch + skips.pop(), mc * m, emb)])
                ch = mc * m
                if side >> level in attention:
                    block.append(Attention(ch))
                self.up.append(block)
            if level > 0:
                self.up.append(torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(ch, ch, 3, padding=1)))
        self.out_norm = group_norm(mc)
        self.output = zero(torch.nn.Conv2d(mc, 2, 3, padding=1))

    def run(self, block, h, emb):
        if isinstance(block, torch.nn.ModuleList):
            h = block[0](h, emb)
            return block[1](h) if len(block) > 1 else h
        return block(h)

    def forward(self, x, t):
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
        angles = t.float()[:, None] * freqs[None]
        emb = self.time(torch.cat([torch.cos(angles), torch.sin(angles)], 1))
        h = self.input(x.reshape(-1, 1, 28, 28))
        skips = [h]
        for block in self.down:
            h = self.run(block, h, emb)
            skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)
        for block in self.up:
            if isinstance(block, torch.nn.ModuleList):
                h = torch.cat([h, skips.pop()], 1)
            h = self.run(block, h, emb)
        return self.output(F.silu(self.out_norm(h))).reshape(x.shape[0], -1)


class Mnist:
    steps, d = 1000, 784

    def __init__(self):
        self.load()
        T, s = self.steps, 0.008
        f = [math.cos((k / T + s) / (1 + s) * math.pi / 2) ** 2 for k in range(T + 1)]
        beta = torch.tensor([0.0] + [min(1 - f[k] / f[k - 1], 0.999) for k in range(1, T + 1)], dtype=torch.float64)
        abar = torch.cumprod(1 - beta, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        safe = (1 - abar).clamp_min(1e-300)
        self.beta = beta.float()
        self.log_beta = beta.clamp_min(1e-300).log().float()
        self.sqrt_abar, self.sqrt_1m_abar = abar.sqrt().float(), (1 - abar).sqrt().float()
        self.c0 = (abar_prev.sqrt() * beta / safe).float()
        self.ct = ((1 - beta).sqrt() * (1 - abar_prev) / safe).float()
        var = (beta * (1 - abar_prev) / safe).clamp_min(1e-300)
        self.post_var, self.post_logvar = var.float(), var.log().float()
        self.eps_weight = (beta / safe.sqrt()).float()
        self.inv_sqrt_alpha = (1 / (1 - beta).sqrt()).float()
        self.constant = 0.0
        self.model = UNet()

    def load(self):
        import gzip
        import os

        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "datasets", "mnist")
        with gzip.open(os.path.join(root, "train-images-idx3-ubyte.gz")) as f:
            raw = f.read()[16:]
        pixels = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, 784).float()
        self.mean, self.scale = pixels.mean(), (pixels.var() + 1 / 12).sqrt()
        self.pixels = pixels

    def sample(self, n):
        # the reverse chain of `diffusion sample` (every step): the mean from x_0's estimate,
        # clipped to the pixels' range, the learned variance between beta and the posterior's
        x = torch.randn(n, self.d)
        lo, hi = (0 - self.mean) / self.scale, (256 - self.mean) / self.scale
        for t in range(self.steps, 0, -1):
            z = self.model(x, torch.full((n,), t, dtype=torch.long))
            eps, v = z[:, : self.d], torch.sigmoid(z[:, self.d :])
            x0 = ((x - self.sqrt_1m_abar[t] * eps) / self.sqrt_abar[t]).clamp(lo, hi)
            mean = self.c0[t] * x0 + self.ct[t] * x
            if t > 1:
                logvar = v * self.log_beta[t] + (1 - v) * self.post_logvar[t]
                x = mean + torch.exp(0.5 * logvar) * torch.randn_like(x)
            else:
                x = mean
        return x

    def data(self, n):
        x = self.pixels[torch.randint(0, self.pixels.shape[0], (n,))] + torch.rand(n, 784)
        return (x - self.mean) / self.scale

    def loss(self, x0):
        n = x0.shape[0]
        t = torch.randint(2, self.steps + 1, (n,))
        eps = torch.randn_like(x0)
        xt = self.sqrt_abar[t, None] * x0 + self.sqrt_1m_abar[t, None] * eps
        z = self.model(xt, t)
        z_mu, z_sigma = z[:, : self.d], z[:, self.d :]
        mse = ((z_mu - eps) ** 2).sum(1).mean()
        # the bound's KL with the mean held fixed: its gradient reaches only the variance
        mu_p = (xt - self.eps_weight[t, None] * z_mu.detach()) * self.inv_sqrt_alpha[t, None]
        v = torch.sigmoid(z_sigma)
        logvar_p = v * self.log_beta[t, None] + (1 - v) * self.post_logvar[t, None]
        mu_q = self.c0[t, None] * x0 + self.ct[t, None] * xt
        ratio = ((mu_q - mu_p) ** 2 + self.post_var[t, None]) * torch.exp(-logvar_p)
        kl = 0.5 * (logvar_p - self.post_logvar[t, None] + ratio - 1).sum(1)
        return mse + 0.001 * kl.mean() * (self.steps - 1) / LN2


class PaperNet(torch.nn.Module):
    """The network `PaperConvConfig` builds in crates/diffusion-models/src/image/paper.rs with
    configs/mnist_paper.toml's sizes: four 3x3 convolutions of 20 channels (one scale), the dense
    branch 784 -> 500 -> 500 -> 500 -> 2 x 784, leaky ReLU (0.05) after each, both branches
    scaled by one over the square root of their width and concatenated per pixel, 1x1
    convolutions 22 -> 20 -> 2 x 10 (the last starting at zero), the temporal readout of 10
    Gaussian bumps, z_sigma divided by sqrt(T)."""

    def __init__(self, steps, side=28, conv=(4, 20), dense=(4, 500, 2), upper=(2, 20), bumps=10):
        super().__init__()
        (layers, ch), (dl, dh, do), (ul, uh) = conv, dense, upper
        self.side, self.ch, self.do, self.bumps, self.steps = side, ch, do, bumps, steps
        self.conv = torch.nn.ModuleList(
            [torch.nn.Conv2d(1 if i == 0 else ch, ch, 3, padding=1) for i in range(layers)])
        widths = [side * side] + [dh] * (dl - 1) + [do * side * side]
        self.dense = torch.nn.ModuleList([torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:])])
        widths = [ch + do] + [uh] * (ul - 1) + [2 * bumps]
        self.upper = torch.nn.ModuleList([torch.nn.Conv2d(a, b, 1) for a, b in zip(widths, widths[1:])])
        zero(self.upper[-1])
        # temporal_basis: bumps at linspace(-1, 1, J), width half their spacing, at linspace(-1, 1, T)
        x = torch.linspace(-1, 1, steps, dtype=torch.float64)[:, None]
        centres = torch.linspace(-1, 1, bumps, dtype=torch.float64)[None]
        width = 1.0 / (bumps - 1)
        w = torch.exp(-((x - centres) ** 2) / (2 * width * width))
        self.basis = torch.cat([torch.zeros(1, bumps, dtype=torch.float64), w / w.sum(1, keepdim=True)]).float()

    def forward(self, x, t):
        n, side = x.shape[0], self.side
        y = x.reshape(n, 1, side, side)
        for layer in self.conv:
            y = F.leaky_relu(layer(y), 0.05)
        z = x
        for layer in self.dense:
            z = F.leaky_relu(layer(z), 0.05)
        z = z.reshape(n, side, side, self.do).permute(0, 3, 1, 2)
        y = torch.cat([y / math.sqrt(self.ch), z / math.sqrt(self.do)], 1)
        for i, layer in enumerate(self.upper):
            y = layer(y)
            if i + 1 < len(self.upper):
                y = F.leaky_relu(y, 0.05)
        z = (y.reshape(n, 2, self.bumps, side, side) * self.basis[t][:, None, :, None, None]).sum(2)
        return z[:, 0].reshape(n, -1), z[:, 1].reshape(n, -1) / math.sqrt(self.steps)


class MnistPaper(Mnist):
    """configs/mnist_paper.toml: the paper's network, its schedule (b_1 = 0.001 + 1e-6, then
    1e-6 + (1 - 1e-6 - 1e-5) / linspace(T, 2, T)[t]) and parametrization (mu = x_t sqrt(1 - b_t)
    + z_mu sqrt(b_t), sigma^2 = sigmoid(z_sigma + logit(b_t))), the Monte-Carlo bound,
    dequantised pixels; sampling ends with the fixed edge step."""

    def __init__(self):
        self.load()
        T = self.steps
        grid = torch.linspace(T, 2, T, dtype=torch.float64)
        m = torch.full((T,), 1e-6, dtype=torch.float64)
        m[0] += 0.001
        beta = torch.cat([torch.zeros(1, dtype=torch.float64), m + (1 / grid) * (1 - m - 1e-5)])
        abar = torch.cumprod(1 - beta, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        safe = (1 - abar).clamp_min(1e-300)
        self.beta = beta.float()
        self.sqrt_b, self.sqrt_1mb = beta.sqrt().float(), (1 - beta).sqrt().float()
        self.logit_b = (beta.clamp_min(1e-300) / (1 - beta)).log().float()
        self.sqrt_abar, self.sqrt_1m_abar = abar.sqrt().float(), (1 - abar).sqrt().float()
        self.c0 = (abar_prev.sqrt() * beta / safe).float()
        self.ct = ((1 - beta).sqrt() * (1 - abar_prev) / safe).float()
        var = (beta * (1 - abar_prev) / safe).clamp_min(1e-300)
        self.post_var, self.post_logvar = var.float(), var.log().float()
        self.model = PaperNet(T)

    def kernel(self, xt, t):
        z_mu, z_sigma = self.model(xt, t)
        mu = xt * self.sqrt_1mb[t, None] + z_mu * self.sqrt_b[t, None]
        return mu, F.logsigmoid(z_sigma + self.logit_b[t, None])

    def sample(self, n):
        x = torch.randn(n, self.d)
        for t in range(self.steps, 1, -1):
            mu, logvar = self.kernel(x, torch.full((n,), t, dtype=torch.long))
            x = mu + torch.exp(0.5 * logvar) * torch.randn_like(x)
        return x * self.sqrt_1mb[1] + self.sqrt_b[1] * torch.randn_like(x)

    def loss(self, x0):
        n = x0.shape[0]
        t = torch.randint(2, self.steps + 1, (n,))
        xt = self.sqrt_abar[t, None] * x0 + self.sqrt_1m_abar[t, None] * torch.randn_like(x0)
        mu_p, logvar_p = self.kernel(xt, t)
        mu_q = self.c0[t, None] * x0 + self.ct[t, None] * xt
        ratio = ((mu_q - mu_p) ** 2 + self.post_var[t, None]) * torch.exp(-logvar_p)
        kl = 0.5 * (logvar_p - self.post_logvar[t, None] + ratio - 1).sum(1)
        return kl.mean() * (self.steps - 1) / LN2


def loss(problem, x0):
    if hasattr(problem, "loss"):
        return problem.loss(x0)
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
    ap.add_argument("--model", choices=["roll", "heartbeat", "mnist", "mnist_paper"], default="roll")
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

    problem = {"roll": Roll, "heartbeat": Beat, "mnist": Mnist, "mnist_paper": MnistPaper}[a.model]()
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
        opt = torch.optim.Adam(problem.model.parameters(), lr=5e-4 if a.model == "mnist" else 1e-3)
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
