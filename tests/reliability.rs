//! Reliability through the `diffusion` binary: checkpoints and `--resume` (a run killed with
//! SIGKILL and resumed ends exactly where an uninterrupted run ends), determinism, divergence,
//! and bad checkpoints.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// A run of 3,000 small steps with a checkpoint every 500: a few seconds of training.
fn long_config(dir: &Path) -> PathBuf {
    let config = dir.join("long.toml");
    std::fs::write(
        &config,
        TINY.replace("steps = 1500", "steps = 3000\ncheckpoint_every = 500")
            .replace("log_every = 500", "log_every = 100"),
    )
    .unwrap();
    config
}

/// metrics.csv without the wall-time column.
fn losses(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

fn samples(run: &Path, out: &Path) -> Vec<u8> {
    common::run(&["sample", "--run", s(run), "-n", "300", "--out", s(out)]);
    std::fs::read(out).unwrap()
}

fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Starts training into `out` and kills it with SIGKILL once `until` holds (or the run ends).
fn train_and_kill(args: &[&str], until: impl Fn() -> bool) {
    let mut child = bin()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !until() && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let dir = workdir("resume");
    let config = long_config(&dir);
    let whole = dir.join("whole");
    run(&[
        "train",
        "--config",
        s(&config),
        "--out",
        s(&whole),
        "--eval-n",
        "100",
    ]);
    assert_eq!(
        checkpoints(&whole),
        ["step-000002500", "step-000003000"],
        "the two newest are kept"
    );

    // Killed right after its second checkpoint, then at a moment nobody chose, then resumed to
    // the end.
    let cut = dir.join("cut");
    let args = [
        "train",
        "--config",
        s(&config),
        "--out",
        s(&cut),
        "--eval-n",
        "100",
    ];
    train_and_kill(&args, || cut.join("checkpoints/step-000001000").exists());
    let after_kill = checkpoints(&cut);
    assert!(
        after_kill.contains(&"step-000001000".to_string()),
        "{after_kill:?}"
    );
    assert!(!cut.join("model.bpk").exists(), "killed before the end");
    let resume = ["train", "--resume", s(&cut), "--eval-n", "100"];
    let started = Instant::now();
    train_and_kill(&resume, || started.elapsed() > Duration::from_millis(1300));
    let out = run(&resume);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("resuming"), "{err}");

    assert_eq!(losses(&whole), losses(&cut));
    assert_eq!(
        samples(&whole, &dir.join("whole.csv")),
        samples(&cut, &dir.join("cut.csv"))
    );
    let k = |run: &Path| {
        json(&common::run(&[
            "evaluate",
            "--run",
            s(run),
            "--n",
            "300",
            "--json",
        ]))["k_bits"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(k(&whole).to_bits(), k(&cut).to_bits());

    // A run without train.ema_decay has no averaged weights to ask for.
    fails(
        &[
            "sample",
            "--run",
            s(&whole),
            "-n",
            "5",
            "--out",
            s(&dir.join("x.csv")),
            "--weights",
            "ema",
        ],
        "has no averaged weights",
    );

    // Resuming a finished run only re-evaluates it.
    run(&resume);
    assert_eq!(losses(&whole), losses(&cut));
}

#[test]
fn bad_checkpoints_are_refused_without_touching_the_run() {
    let dir = workdir("badckpt");
    let config = long_config(&dir);
    let run_dir = dir.join("run");
    run(&[
        "train",
        "--config",
        s(&config),
        "--out",
        s(&run_dir),
        "--steps",
        "1000",
        "--eval-n",
        "10",
    ]);
    let newest = run_dir.join("checkpoints/step-000001000");
    let resume = ["train", "--resume", s(&run_dir)];
    let model = newest.join("model.bpk");
    let good = std::fs::read(&model).unwrap();

    std::fs::write(&model, &good[..good.len() - 100]).unwrap();
    fails(&resume, "truncated");
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    std::fs::write(&model, &flipped).unwrap();
    fails(&resume, "altered");
    std::fs::write(&model, &good).unwrap();

    let state = newest.join("state.json");
    let good_state = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, &good_state[..good_state.len() / 2]).unwrap();
    fails(&resume, "not a checkpoint state");
    // A checkpoint of another configuration (here: another batch size).
    std::fs::write(
        &state,
        good_state.replace("\"batch_size\": 256", "\"batch_size\": 128"),
    )
    .unwrap();
    fails(&resume, "another configuration");
    std::fs::write(&state, &good_state).unwrap();

    std::fs::remove_dir_all(run_dir.join("checkpoints")).unwrap();
    fails(&resume, "no checkpoint to resume from");
    fails(
        &["train", "--resume", s(&dir.join("nowhere"))],
        "not a run folder",
    );
    fails_usage(
        &["train", "--resume", s(&run_dir), "--config", s(&config)],
        "cannot be used with",
    );
    fails_usage(&["train"], "--config");
    // None of this touched the run's files.
    assert!(run_dir.join("model.bpk").is_file());
    assert_eq!(losses(&run_dir).len(), 11);
}

#[test]
fn divergence_names_the_step_and_keeps_the_checkpoint() {
    let dir = workdir("diverge");
    let config = dir.join("diverge.toml");
    std::fs::write(
        &config,
        TINY.replace("steps = 1500", "steps = 1000\ncheckpoint_every = 1")
            .replace(
                "optimizer = { kind = \"adam\", lr = 3e-3 }",
                "optimizer = { kind = \"sgd\", lr = 1e4 }",
            ),
    )
    .unwrap();
    let out = dir.join("run");
    let result = bin()
        .args(["train", "--config", s(&config), "--out", s(&out)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{err}");
    let line = err.lines().last().unwrap();
    assert!(line.starts_with("error: training diverged: "), "{err}");
    let step: usize = line
        .split(" at step ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in {line}"));
    assert!(step >= 1, "{line}");
    if step > 1 {
        let kept = format!("step-{:09}", step - 1);
        assert!(line.contains(&kept), "{line}");
        assert!(checkpoints(&out).contains(&kept), "{:?}", checkpoints(&out));
    }
    assert!(!out.join("model.bpk").exists());
}

/// The same config and seed give the same training on the CPU backend: identical losses in
/// metrics.csv and identical samples (the model files differ only in Burn's random parameter ids).
#[test]
fn same_seed_same_run() {
    let dir = workdir("determinism");
    let config = dir.join("tiny.toml");
    std::fs::write(
        &config,
        TINY.replace("steps = 1500", "steps = 200")
            .replace("log_every = 500", "log_every = 50"),
    )
    .unwrap();
    let train_and_sample = |name: &str, seed: &str| {
        let out = dir.join(name);
        run(&[
            "train",
            "--config",
            s(&config),
            "--out",
            s(&out),
            "--seed",
            seed,
            "--eval-n",
            "10",
        ]);
        (
            losses(&out),
            samples(&out, &dir.join(format!("{name}.csv"))),
        )
    };
    let (loss_a, samples_a) = train_and_sample("a", "7");
    let (loss_b, samples_b) = train_and_sample("b", "7");
    let (loss_c, samples_c) = train_and_sample("c", "8");
    assert_eq!(loss_a.len(), 5);
    assert_eq!(loss_a, loss_b);
    assert_eq!(samples_a, samples_b);
    assert_ne!(loss_a, loss_c);
    assert_ne!(samples_a, samples_c);
}

/// The importance sampler's state and the learned betas are part of the checkpoint: a killed
/// and resumed run with both ends where the uninterrupted one does.
#[test]
fn importance_sampling_a_learned_schedule_and_the_average_resume_exactly() {
    let dir = workdir("resume-importance");
    let config = dir.join("importance.toml");
    std::fs::write(
        &config,
        TINY.replace(
            "schedule = { kind = \"linear\", start = 1e-3, end = 0.3 }",
            "schedule = { kind = \"learned\", init = { kind = \"linear\", start = 1e-3, end = 0.3 } }",
        )
        .replace(
            "steps = 1500",
            "steps = 1200\ncheckpoint_every = 400\nt_sampling = \"importance\"\nema_decay = 0.99",
        )
        .replace("log_every = 500", "log_every = 100"),
    )
    .unwrap();
    let whole = dir.join("whole");
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--config",
            s(&config),
            "--out",
            s(out),
            "--eval-n",
            "100",
        ]
        .map(String::from)
        .to_vec()
    };
    let whole_args = args(&whole);
    run(&whole_args.iter().map(String::as_str).collect::<Vec<_>>());
    let cut = dir.join("cut");
    let cut_args = args(&cut);
    train_and_kill(
        &cut_args.iter().map(String::as_str).collect::<Vec<_>>(),
        || cut.join("checkpoints/step-000000400").exists(),
    );
    assert!(!cut.join("model.bpk").exists(), "killed before the end");
    run(&["train", "--resume", s(&cut), "--eval-n", "100"]);
    assert_eq!(losses(&whole), losses(&cut));
    let betas = |run: &Path| std::fs::read_to_string(run.join("betas.csv")).unwrap();
    assert_eq!(betas(&whole), betas(&cut));
    // both weights, raw and averaged, give the same samples bit for bit (the default is the
    // average; the raw weights' samples differ from it)
    let weighted = |run: &Path, weights: &str| {
        let out = dir.join(format!("{weights}.csv"));
        common::run(&[
            "sample",
            "--run",
            s(run),
            "-n",
            "300",
            "--out",
            s(&out),
            "--weights",
            weights,
        ]);
        std::fs::read(out).unwrap()
    };
    for weights in ["raw", "ema"] {
        assert_eq!(
            weighted(&whole, weights),
            weighted(&cut, weights),
            "{weights}"
        );
    }
    assert_ne!(weighted(&whole, "raw"), weighted(&whole, "ema"));
    assert_eq!(
        weighted(&whole, "ema"),
        samples(&whole, &dir.join("default.csv"))
    );
    assert_eq!(
        samples(&whole, &dir.join("whole.csv")),
        samples(&cut, &dir.join("cut.csv"))
    );
}

/// A run on a data file that it standardises and dequantises resumes bit for bit: the row
/// sampler and the dequantisation noise are one checkpointed stream.
#[test]
fn a_dequantised_file_run_resumes_exactly() {
    let dir = workdir("resume-file");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/digits.npy");
    let config = dir.join("digits.toml");
    std::fs::write(
        &config,
        TINY.replace(
            "[data]\nkind = \"swiss-roll\"\nnoise = 0.5",
            &format!(
                "[data]\nkind = \"file\"\npath = \"{}\"\nstandardize = \"global\"\ndequantize = true",
                data.display()
            ),
        )
        .replace("steps = 1500", "steps = 1200\ncheckpoint_every = 400")
        .replace("log_every = 500", "log_every = 100"),
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("dequantize")
    );
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--config",
            s(&config),
            "--out",
            s(out),
            "--eval-n",
            "50",
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = dir.join("whole");
    run(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    let cut = dir.join("cut");
    train_and_kill(
        &args(&cut).iter().map(String::as_str).collect::<Vec<_>>(),
        || cut.join("checkpoints/step-000000400").exists(),
    );
    assert!(!cut.join("model.bpk").exists(), "killed before the end");
    run(&["train", "--resume", s(&cut), "--eval-n", "50"]);
    assert_eq!(losses(&whole), losses(&cut));
    assert_eq!(
        samples(&whole, &dir.join("whole.csv")),
        samples(&cut, &dir.join("cut.csv"))
    );
}
