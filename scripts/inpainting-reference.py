#!/usr/bin/env python3
"""What a sampler of the digits' own conditional scores on left-half inpainting.

    python3 scripts/inpainting-reference.py [--images 1000] [--donors 1 5 10 20] [--seed 0]

The completions of `diffusion evaluate-conditional --mask left-half` are scored by a 10-nearest-
neighbour classifier on the training digits. The left half of a digit is not determined by its
right half, so even draws of the true conditional p(left | right) get another digit's label
some of the time. This script makes such draws without a model: for each of the first N test
digits it takes the k training digits whose right halves are nearest to the test digit's
(Euclidean distance on the 0..255 pixels), picks one of them at random (seeded) and pastes its
left half beside the test digit's right half; then it labels that completion with the same
classifier as `evaluate-conditional` (10 nearest training digits, most votes, ties to the
nearest voter). k = 1 is the single best match; larger k a broader nonparametric estimate of
the conditional. Beside each draw it scores the mean of the k donors' left halves, the
estimate of the conditional mean that `--average` gives a model's completions. Printed as one
JSON object. Needs numpy only.
"""

import argparse
import importlib.util
import json
import os

import numpy as np

# the digit check's reading of the IDX files and its nearest-neighbour search
_spec = importlib.util.spec_from_file_location(
    "digit_samples", os.path.join(os.path.dirname(os.path.abspath(__file__)), "digit-samples.py")
)
_digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_digits)
idx = _digits.idx


def nearest(queries, train, k):
    """Indices `[n, k]` of each query's k nearest training rows, nearest first."""
    return _digits.nearest(queries, train, k)[0]


def knn_label(queries, train, labels, k=10):
    """The classifier of `evaluate-conditional`: most votes, ties to the nearest voter."""
    out = []
    for row in nearest(queries, train, k):
        votes = np.bincount(labels[row], minlength=256)
        top = votes.max()
        out.append(next(labels[i] for i in row if votes[labels[i]] == top))
    return np.array(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--donors", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    train = idx("train-images-idx3-ubyte.gz").astype(np.float64).reshape(-1, 28, 28)
    train_labels = idx("train-labels-idx1-ubyte.gz")
    test = idx("t10k-images-idx3-ubyte.gz").astype(np.float64).reshape(-1, 28, 28)[: a.images]
    test_labels = idx("t10k-labels-idx1-ubyte.gz")[: a.images]
    flat = train.reshape(len(train), -1)
    rng = np.random.default_rng(a.seed)
    # the known right half (columns 14..27), as `--mask left-half` leaves it
    near = nearest(test[:, :, 14:].reshape(len(test), -1), train[:, :, 14:].reshape(len(train), -1), max(a.donors))
    report = {
        "images": int(len(test)),
        "truth": float((knn_label(test.reshape(len(test), -1), flat, train_labels) == test_labels).mean()),
    }
    for k in a.donors:
        donor = near[np.arange(len(test)), rng.integers(0, k, len(test))]
        completion = test.copy()
        completion[:, :, :14] = train[donor, :, :14]
        got = knn_label(completion.reshape(len(test), -1), flat, train_labels)
        mean = test.copy()
        mean[:, :, :14] = train[near[:, :k], :, :14].mean(axis=1)
        got_mean = knn_label(mean.reshape(len(test), -1), flat, train_labels)
        report[f"donors_{k}"] = {
            "label_accuracy": float((got == test_labels).mean()),
            "donor_label_accuracy": float((train_labels[donor] == test_labels).mean()),
            "mean_label_accuracy": float((got_mean == test_labels).mean()),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
