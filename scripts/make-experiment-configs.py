#!/usr/bin/env python3
"""Writes configs/experiments/<comparison>/<run>.toml: the presentation's comparisons, each a
set of runs that differ from a shared base in one setting. Rerun after editing; the files are
committed so a user can also run any one of them with `diffusion train --config`."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "configs" / "experiments"

# The Swiss-roll base: the presentation's model (2 -> 128 -> 128 -> 4, softplus, per-step
# embedding), T = 100, linear betas, the paper's parametrization, Adam 1e-3 constant; 5,000
# steps at batch 512 (about a minute on 2 cores).
ROLL = dict(
    process="gaussian", steps=100, schedule='{ kind = "linear", start = 1e-4, end = 0.1 }',
    parametrization="paper", hidden="[128, 128]", activation="softplus", time="embedding",
    train_steps=5000, batch=512, log_every=100, loss="bound",
    optimizer='{ kind = "adam", lr = 1e-3 }', lr_schedule='{ kind = "constant" }',
)

# The heartbeat base: T = 2000, pi = 0.2, the tweaked network (128 x 3 softplus, sinusoidal
# time features); 10,000 steps at batch 256.
BEAT = dict(
    process="binomial", steps=2000, schedule='{ kind = "reciprocal" }', parametrization="paper",
    hidden="[128, 128, 128]", activation="softplus", time="sinusoidal", train_steps=10000,
    batch=256, log_every=250, loss="bound", optimizer='{ kind = "adam", lr = 3e-3 }',
    lr_schedule='{ kind = "cosine", min_lr = 1e-5 }',
)

COMPARISONS = {
    "optimizers": (ROLL, {
        "adam": {},
        "sgd": {"optimizer": '{ kind = "sgd", lr = 1e-2 }'},
        # momentum 0.9 multiplies the step by 10: the same effective rate as plain SGD
        "sgd_momentum": {"optimizer": '{ kind = "sgd", lr = 1e-3, momentum = 0.9 }'},
        "sgd_momentum_decay": {
            "optimizer": '{ kind = "sgd", lr = 1e-3, momentum = 0.9 }',
            "lr_schedule": '{ kind = "exponential", gamma = 0.9995 }',
        },
    }),
    "learning_rates": (ROLL, {
        "adam_1e-4": {"optimizer": '{ kind = "adam", lr = 1e-4 }'},
        "adam_1e-3": {},
        "adam_1e-2": {"optimizer": '{ kind = "adam", lr = 1e-2 }'},
    }),
    "schedules": (ROLL, {
        "linear": {},
        "cosine": {"schedule": '{ kind = "cosine", s = 0.008 }'},
    }),
    "loss": (ROLL, {
        "bound_paper": {},
        "bound_epsilon": {"parametrization": "epsilon-fixed"},
        "mse_epsilon": {"parametrization": "epsilon-fixed", "loss": "mse"},
        "bound_epsilon_range": {"parametrization": "epsilon"},
        "hybrid_epsilon_range": {"parametrization": "epsilon", "loss": "hybrid"},
    }),
    "trajectory_length": (ROLL, {
        "t40": {"steps": 40, "schedule": '{ kind = "paper" }'},
        "t100": {},
        "t150": {"steps": 150},
        "t1000": {"steps": 1000, "schedule": '{ kind = "linear", start = 1e-5, end = 0.01 }'},
    }),
    "model_size": (ROLL, {
        "h32": {"hidden": "[32, 32]"},
        "h128": {},
        "h256": {"hidden": "[256, 256]"},
    }),
    "heartbeat_model": (BEAT, {
        "proposed": {"hidden": "[50, 50, 50]", "activation": "sigmoid", "time": "readout",
                     "optimizer": '{ kind = "adam", lr = 1e-3 }'},
        "tweaked": {},
    }),
    "heartbeat_learning_rates": (BEAT, {
        "adam_1e-3": {"optimizer": '{ kind = "adam", lr = 1e-3 }'},
        "adam_3e-3": {},
        "adam_1e-2": {"optimizer": '{ kind = "adam", lr = 1e-2 }'},
    }),
}


def render(name, comparison, c):
    data = ('kind = "swiss-roll"\nnoise = 0.5' if c["process"] == "gaussian"
            else 'kind = "heartbeat"\nlength = 20\nperiod = 5')
    pi = "pi = 0.2\n" if c["process"] == "binomial" else ""
    return f"""# Experiment `{comparison}`, run `{name}` (written by scripts/make-experiment-configs.py).
[diffusion]
process = "{c['process']}"
steps = {c['steps']}
schedule = {c['schedule']}
{pi}parametrization = "{c['parametrization']}"

[data]
{data}

[model]
hidden = {c['hidden']}
activation = "{c['activation']}"
time = "{c['time']}"

[train]
steps = {c['train_steps']}
batch_size = {c['batch']}
seed = 0
log_every = {c['log_every']}
loss = "{c['loss']}"
optimizer = {c['optimizer']}
lr_schedule = {c['lr_schedule']}
"""


for comparison, (base, runs) in COMPARISONS.items():
    folder = ROOT / comparison
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.toml"):
        old.unlink()
    for name, change in runs.items():
        (folder / f"{name}.toml").write_text(render(name, comparison, {**base, **change}))
