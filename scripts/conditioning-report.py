#!/usr/bin/env python3
"""Conditioned samples (paper section 2.5) against the exact conditionals, as Markdown tables.

Trains the default Swiss-roll and heartbeat runs if their folders do not exist yet
(configs/swiss_roll.toml, configs/heartbeat.toml), then runs `diffusion evaluate-conditional`
for every case and every way of conditioning, and prints one table per data set: for the
heartbeat the share of valid samples that agree with the known bits and the total-variation
distance to the exact conditional, for the Swiss roll the energy distance to exact posterior
draws over its floor (the same figure between two exact sets).

    cargo build --release -p diffusion-cli
    python3 scripts/conditioning-report.py                     # about 40 minutes on 2 cores
    python3 scripts/conditioning-report.py --only roll --particles 32768   # larger systems
    python3 scripts/conditioning-report.py --roll R --beat H   # existing runs

Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys

MODES = [
    ("constant", []),
    ("forward", ["--condition-mode", "forward"]),
    ("likelihood", ["--condition-mode", "likelihood"]),
    ("constant + resampling", ["--resample"]),
    ("likelihood + resampling", ["--condition-mode", "likelihood", "--resample"]),
]

# the twisted particle system targets the model's own conditional (Gaussian runs only)
TWISTED = ("twisted + resampling", ["--condition-mode", "twisted", "--resample"])
ROLL_MODES = MODES + [TWISTED]

BEAT_CASES = [
    ("bin 7 known to be 1", ["--known", "7=1"]),
    ("bins 0 and 6 known to be 0", ["--known", "0=0,6=0"]),
    ("bins 3, 8 seen as 1 and bin 0 as 0, flip probability 0.1",
     ["--observe", "3=1,8=1,0=0", "--observe-noise", "0.1"]),
]

ROLL_CASES = [
    ("inpainting: y given x = 0.5", ["--known", "0=0.5"]),
    ("inpainting: y given x = -1.2", ["--known", "0=-1.2"]),
    ("denoising: y = (-1.6, 0), s = 0.3", ["--observe=-1.6,0", "--observe-noise", "0.3"]),
    ("denoising: y = (-1.6, 0), s = 0.1", ["--observe=-1.6,0", "--observe-noise", "0.1"]),
    ("denoising: y = (-1.6, 0), s = 1.0", ["--observe=-1.6,0", "--observe-noise", "1.0"]),
    ("denoising off the roll: y = (2.5, 2.5), s = 0.3",
     ["--observe=2.5,2.5", "--observe-noise", "0.3"]),
]


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout


def ensure_run(binary, folder, config):
    if not os.path.isdir(folder):
        print(f"training {config} into {folder}", file=sys.stderr)
        run([binary, "train", "--config", config, "--out", folder])


def evaluate(binary, folder, n, case, mode, repeats=1, extra=()):
    cmd = [binary, "evaluate-conditional", "--run", folder, "-n", str(n), "--json",
           "--repeats", str(repeats), *extra]
    return json.loads(run(cmd + case + mode))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "diffusion"))
    p.add_argument("--roll", default="runs/conditioning-roll")
    p.add_argument("--beat", default="runs/conditioning-heartbeat")
    p.add_argument("--n", type=int, default=10000, help="samples per heartbeat case")
    p.add_argument("--repeats", type=int, default=5,
                   help="Swiss roll: sets of 4,000 samples per cell")
    p.add_argument("--particles", type=int, default=4096,
                   help="Swiss roll: chains in one particle system (and samples per set)")
    p.add_argument("--model-slice", type=int, default=400000,
                   help="Swiss roll inpainting: unconditioned samples for the model's own "
                        "conditional (0: none)")
    p.add_argument("--only", choices=["roll", "beat"], help="one data set")
    a = p.parse_args()

    if a.only != "beat":
        ensure_run(a.bin, a.roll, "configs/swiss_roll.toml")
        print(f"Swiss roll (`{a.roll}`, configs/swiss_roll.toml): energy distance of 4,000 "
              "conditional samples to 4,000 exact posterior draws over its floor (the mean of "
              "the same figure between two exact sets, 32 pairs; its sd in brackets), each "
              f"cell the mean of {a.repeats} sets ± its standard error; within 2x is the "
              "target.\n")
        print("| case | floor (sd) | " + " | ".join(m for m, _ in ROLL_MODES)
              + " | the model's own conditional |")
        print("|---|---|" + "---|" * (len(ROLL_MODES) + 1))
        n = max(4000, a.particles)
        extra = ["--particles", str(a.particles)]
        for name, case in ROLL_CASES:
            cells, floor = [], None
            for _, mode in ROLL_MODES:
                e = evaluate(a.bin, a.roll, n, case, mode, a.repeats, extra)
                floor = f"{e['energy_distance_floor']:.5f} ({e['energy_distance_floor_sd']:.5f})"
                cells.append(f"{e['energy_ratio']:.2f}x ± {e['energy_ratio_stderr']:.2f}")
            model = "–"
            if a.model_slice > 0 and "--known" in case:
                e = evaluate(a.bin, a.roll, n, case, TWISTED[1], 1,
                             extra + ["--model-slice", str(a.model_slice)])
                if e.get("model_slice_ratio") is not None:
                    model = (f"{e['model_slice_ratio']:.2f}x ({e['model_slice_samples']} "
                             f"samples; the twisted samples to it: "
                             f"{e['sampler_to_model_ratio']:.2f}x)")
            print(f"| {name} | {floor} | " + " | ".join(cells) + f" | {model} |", flush=True)
        print()
    if a.only != "roll":
        ensure_run(a.bin, a.beat, "configs/heartbeat.toml")
        print(f"Heartbeat (`{a.beat}`, configs/heartbeat.toml): of {a.n:,} conditional "
              "samples, the share that are valid sequences agreeing with the known bits, and "
              "the total-variation distance to the exact conditional (invalid samples "
              "counted); the target is >= 99 % and <= 0.03.\n")
        print("| case | exact P(phase) | " + " | ".join(m for m, _ in MODES) + " |")
        print("|---|---|" + "---|" * len(MODES))
        for name, case in BEAT_CASES:
            cells, exact = [], None
            for _, mode in MODES:
                e = evaluate(a.bin, a.beat, a.n, case, mode)
                exact = " ".join(f"{v:.3f}" for v in e["exact_phases"])
                cells.append(f"{100 * e['valid_consistent_fraction']:.2f} % / "
                             f"{e['total_variation']:.4f}")
            print(f"| {name} | {exact} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
