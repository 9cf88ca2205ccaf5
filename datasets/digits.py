#!/usr/bin/env python3
"""Extracts the 8x8 handwritten digits that ship inside scikit-learn into .npy files.

    python3 datasets/digits.py            # writes datasets/digits.npy and datasets/digits_binary.npy

scikit-learn is installed on first use into ~/.cache/diffusion-bench-venv (the virtual
environment `cargo xtask bench` uses for PyTorch); the script re-runs itself there.

The data: 1,797 images of 8x8 pixels, each pixel an integer count 0..16 (the number of "on" pixels
of a 4x4 block of a 32x32 bitmap), from the UCI "Optical Recognition of Handwritten Digits" data
set (Alpaydin and Kaynak, 1998; test part, as scikit-learn ships it), licensed CC BY 4.0
(https://archive.ics.uci.edu/dataset/80). scikit-learn itself is BSD-3-Clause.

- digits.npy: [1797, 64] float32, the counts 0..16 as they are (row-major 8x8 images).
- digits_binary.npy: [1797, 64] float32, 1 where the count is >= 8, else 0.
"""

import os
import subprocess
import sys
from pathlib import Path

VENV = Path.home() / ".cache" / "diffusion-bench-venv"
HERE = Path(__file__).resolve().parent


def ensure_sklearn():
    """Imports scikit-learn, or installs it into VENV and re-runs this script with VENV's python."""
    try:
        import numpy  # noqa: F401
        import sklearn  # noqa: F401
        return
    except ImportError:
        pass
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "numpy", "scikit-learn"],
                   check=True)
    if Path(sys.executable).resolve() == python.resolve():
        return
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def main():
    ensure_sklearn()
    import numpy as np
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    assert x.shape == (1797, 64) and x.min() == 0 and x.max() == 16
    np.save(HERE / "digits.npy", x)
    np.save(HERE / "digits_binary.npy", (x >= 8).astype(np.float32))
    print(f"wrote {HERE / 'digits.npy'} and {HERE / 'digits_binary.npy'}: {x.shape[0]} images, "
          f"{(x >= 8).mean():.4f} of binary pixels on")


if __name__ == "__main__":
    main()
