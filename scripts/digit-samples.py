#!/usr/bin/env python3
"""Are samples digits? A k-nearest-neighbour check of MNIST samples against the training digits.

    python3 scripts/digit-samples.py samples.npy [--k 10] [--agree 8]

`samples.npy` holds images as `diffusion sample` writes them for an MNIST run: `[n, 1, 28, 28]` (or
`[n, 784]`), pixel values 0..255, or bits 0/1 for a binarised run (configs/mnist_binary.toml: the
training and test digits are then binarised at 128 too). For each sample the k nearest training digits (Euclidean
distance on the pixels) vote; a sample counts as a digit when at least `agree` of them share a
label. Printed as one JSON object: the share of such samples, how many of each class they are,
and the copy check: each sample's distance to its nearest training digit beside the same
distance for the 1,000 test digits (a sample nearer to a training digit than the closest test
digit ever is, is called a copy; fresh digits drawn like the test digits would give about
samples / 1,001 of those by chance, printed beside). Needs numpy only.
"""

import argparse
import gzip
import json
import os

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "datasets", "mnist")


def idx(name):
    with gzip.open(os.path.join(ROOT, name)) as f:
        raw = f.read()
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw[4 + 4 * rank :], dtype=np.uint8).reshape(dims)


def nearest(queries, train, k):
    """Indices `[n, k]` and distances `[n, k]` of each query's k nearest training rows."""
    t2 = (train**2).sum(1)
    out_i, out_d = [], []
    for lo in range(0, len(queries), 256):
        q = queries[lo : lo + 256]
        d2 = (q**2).sum(1)[:, None] + t2[None, :] - 2.0 * q @ train.T
        i = np.argpartition(d2, k, axis=1)[:, :k]
        dk = np.take_along_axis(d2, i, 1)
        order = np.argsort(dk, 1)
        out_i.append(np.take_along_axis(i, order, 1))
        out_d.append(np.sqrt(np.maximum(np.take_along_axis(dk, order, 1), 0.0)))
    return np.concatenate(out_i), np.concatenate(out_d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("samples")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--agree", type=int, default=8)
    a = ap.parse_args()
    train = idx("train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float64) / 255.0
    labels = idx("train-labels-idx1-ubyte.gz")
    test = idx("t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float64) / 255.0
    samples = np.load(a.samples).reshape(-1, 784).astype(np.float64)
    if samples.max() <= 1.0:
        # bits: compare with binarised digits
        train = (train >= 128 / 255.0).astype(np.float64)
        test = (test >= 128 / 255.0).astype(np.float64)
    else:
        samples = samples / 255.0
    index, dist = nearest(samples, train, a.k)
    votes = labels[index]
    counts = np.stack([(votes == c).sum(1) for c in range(10)], 1)
    winner, top = counts.argmax(1), counts.max(1)
    digit = top >= a.agree
    _, test_dist = nearest(test, train, 1)
    floor = float(test_dist.min())
    copies = int((dist[:, 0] < floor).sum())
    print(json.dumps({
        "samples": len(samples),
        "digit_share": float(digit.mean()),
        "classes": [int(((winner == c) & digit).sum()) for c in range(10)],
        "nearest_train_distance_median": float(np.median(dist[:, 0])),
        "test_nearest_train_distance_median": float(np.median(test_dist[:, 0])),
        "test_nearest_train_distance_min": floor,
        "copies": copies,
        # samples distributed like the test digits fall under the least of their distances
        # with probability 1 / (tests + 1) each
        "copies_expected_by_chance": len(samples) / (len(test) + 1),
    }))


if __name__ == "__main__":
    main()
