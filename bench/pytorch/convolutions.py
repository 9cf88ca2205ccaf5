#!/usr/bin/env python3
"""PyTorch's counterpart of `cargo run --release -p diffusion-kernels --example convolutions`:
each 3x3 convolution of the MNIST U-Net that keeps the size (batch 64), forward alone (no
autograd) and forward plus backward (the input's, the weights' and the bias's gradients), in
microseconds per call (best of five rounds) and GFLOP/s, the same sizes and accounting.

    ~/.cache/diffusion-bench-venv/bin/python bench/pytorch/convolutions.py [N] [REPEATS] [THREADS]
"""
import sys
import time

import torch


def best(repeats, f):
    f()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            f()
        rounds.append((time.perf_counter() - start) / repeats * 1e6)
    return min(rounds)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    torch.set_num_threads(threads)
    print(f"n = {n}, {threads} threads, torch {torch.__version__}")
    for c_in, c_out, side in [(16, 16, 28), (32, 32, 14), (32, 32, 7), (48, 32, 14)]:
        x = torch.randn(n, c_in, side, side, requires_grad=True)
        w = (torch.randn(c_out, c_in, 3, 3) / (9 * c_in) ** 0.5).requires_grad_()
        b = torch.randn(c_out, requires_grad=True)
        g = torch.randn(n, c_out, side, side)

        def forward():
            with torch.no_grad():
                torch.nn.functional.conv2d(x, w, b, padding=1)

        def both():
            y = torch.nn.functional.conv2d(x, w, b, padding=1)
            (y * g).sum().backward()

        f_us, b_us = best(repeats, forward), best(repeats, both)
        flop = 2.0 * n * c_in * c_out * 9 * side * side
        print(
            f"{c_in:>3} -> {c_out:<3} {side:>2}x{side:<2}  forward {f_us:>8.0f} us "
            f"({flop / f_us / 1e3:>5.1f} GFLOP/s)   forward + backward {b_us:>8.0f} us "
            f"({3 * flop / b_us / 1e3:>5.1f} GFLOP/s)"
        )


if __name__ == "__main__":
    main()
