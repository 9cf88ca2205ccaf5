//! End to end through the `diffusion` binary: train a tiny model, evaluate, sample; and the
//! command line's answers to bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::*;

#[test]
fn train_evaluate_sample_through_the_cli() {
    let dir = workdir("main");
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let untrained = dir.join("untrained");
    let trained = dir.join("trained");
    run(&[
        "train",
        "--config",
        s(&config),
        "--out",
        s(&untrained),
        "--steps",
        "0",
        "--eval-n",
        "200",
    ]);
    run(&[
        "train",
        "--config",
        s(&config),
        "--out",
        s(&trained),
        "--eval-n",
        "200",
    ]);
    for f in [
        "config.json",
        "model.bpk",
        "metrics.csv",
        "summary.json",
        "evaluation.json",
    ] {
        assert!(trained.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(trained.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    assert_eq!(lines[0], "step,loss_bits,lr,wall_time_s");
    assert_eq!(lines.len(), 1 + 3, "{metrics}");
    assert!(lines[3].starts_with("1500,"));

    let eval = |run: &Path| {
        json(&run_ok(&[
            "evaluate",
            "--run",
            s(run),
            "--n",
            "2000",
            "--json",
        ]))
    };
    fn run_ok(args: &[&str]) -> Output {
        run(args)
    }
    let e0 = eval(&untrained);
    let e1 = eval(&trained);
    for key in [
        "k_bits",
        "k_stderr_bits",
        "l_null_bits",
        "neg_data_entropy_bits",
        "n",
        "steps_t",
    ] {
        assert!(e1.get(key).is_some(), "missing {key}: {e1}");
    }
    assert_eq!(e1["n"], 2000);
    assert_eq!(e1["steps_t"], 20);
    assert!((e1["l_null_bits"].as_f64().unwrap() + 4.094191).abs() < 1e-5);
    let (k0, se0) = (
        e0["k_bits"].as_f64().unwrap(),
        e0["k_stderr_bits"].as_f64().unwrap(),
    );
    let (k1, se1) = (
        e1["k_bits"].as_f64().unwrap(),
        e1["k_stderr_bits"].as_f64().unwrap(),
    );
    assert!(
        k1 > k0 + 3.0 * (se0 * se0 + se1 * se1).sqrt(),
        "untrained {k0}, trained {k1}"
    );
    // The samples moved towards the data: a smaller energy distance than the untrained
    // model's, which is far above the floor of two data sets.
    let energy = |e: &serde_json::Value| e["energy_distance"].as_f64().unwrap();
    let floor = e1["energy_distance_floor"].as_f64().unwrap();
    assert!(energy(&e1) < energy(&e0), "{e0} {e1}");
    assert!(floor >= 0.0 && floor < energy(&e0) / 5.0, "{e0}");
    let ceiling = e1["neg_data_entropy_bits"].as_f64().unwrap();
    assert!((ceiling - -1.948).abs() < 0.05, "{ceiling}");
    assert!(k1 < ceiling + 3.0 * se1, "K {k1} above -H(data) {ceiling}");

    let samples = dir.join("samples.csv");
    run(&[
        "sample",
        "--run",
        s(&trained),
        "-n",
        "500",
        "--out",
        s(&samples),
    ]);
    let text = std::fs::read_to_string(&samples).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 500);
    assert!(
        rows.iter()
            .all(|r| r.len() == 2 && r.iter().all(|v| v.is_finite()))
    );
    // The roll is normalised to unit variance: samples must be on that scale, not collapsed.
    let var: f64 = rows
        .iter()
        .map(|r| (r[0] * r[0] + r[1] * r[1]) / 2.0)
        .sum::<f64>()
        / 500.0;
    assert!(var > 0.5 && var < 1.6, "sample variance {var}");

    // The same seed gives the same samples.
    let again = dir.join("again.csv");
    run(&[
        "sample",
        "--run",
        s(&trained),
        "-n",
        "500",
        "--out",
        s(&again),
    ]);
    assert_eq!(
        std::fs::read(&samples).unwrap(),
        std::fs::read(&again).unwrap()
    );

    // A run folder that exists is refused, and left as it was.
    let before = std::fs::read(trained.join("model.bpk")).unwrap();
    fails(
        &["train", "--config", s(&config), "--out", s(&trained)],
        "already exists",
    );
    assert_eq!(before, std::fs::read(trained.join("model.bpk")).unwrap());
    fails(
        &[
            "sample",
            "--run",
            s(&trained),
            "-n",
            "0",
            "--out",
            s(&samples),
        ],
        "-n must be at least 1",
    );
}

#[test]
fn trains_on_a_data_file() {
    let dir = workdir("file");
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY.replace("steps = 1500", "steps = 50")).unwrap();
    let data = dir.join("roll.npy");
    run(&[
        "data",
        "swiss-roll",
        "-n",
        "1000",
        "--out",
        s(&data),
        "--seed",
        "5",
    ]);
    let out = dir.join("run");
    run(&[
        "train",
        "--config",
        s(&config),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--eval-n",
        "50",
    ]);
    assert!(out.join("heldout.npy").is_file());
    let e = json(&run(&["evaluate", "--run", s(&out), "--json"]));
    assert_eq!(e["n"], 100, "10 % of 1000 rows held out");
    assert!(e["neg_data_entropy_bits"].is_null());
    assert!(e["k_bits"].as_f64().unwrap().is_finite());
}

/// An instruction-set cap the kernels do not know is one `error:` line and exit code 2,
/// before any work; a known one (whatever the CPU) runs.
#[test]
fn an_unknown_kernel_instruction_set_is_one_line() {
    let with = |isa: &str| {
        bin()
            .env("DIFFUSION_KERNELS_ISA", isa)
            .arg("devices")
            .output()
            .unwrap()
    };
    let out = with("avx3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: DIFFUSION_KERNELS_ISA=avx3 is none of avx512, avx2, base"),
        "{err}"
    );
    for isa in ["avx512", "avx2", "base"] {
        let out = with(isa);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{isa}: {err}");
    }
}

#[test]
fn bad_input_gets_one_line_and_a_nonzero_exit() {
    let dir = workdir("bad");
    let config = dir.join("c.toml");
    let out = dir.join("never");
    let o = s(&out);
    let case = |text: &str, want: &str| {
        std::fs::write(&config, text).unwrap();
        fails(
            &["train", "--config", s(&config), "--out", o, "--steps", "1"],
            want,
        );
        assert!(!out.exists(), "a refused run must not create its folder");
    };
    case(
        &TINY.replace("[train]", "[train]\nbogus = 1"),
        "unknown field `bogus`",
    );
    case(&TINY.replace("steps = 20", "steps = 0"), "T = 0");
    case(&TINY.replace("end = 0.3", "end = 1.5"), "end = 1.5");
    case(&TINY.replace("steps = 20", "steps = \"x\""), "invalid type");
    case("this is not toml", "config");
    case(
        &TINY.replace("steps = 20", "steps = 2000000"),
        "more than the limit",
    );
    case(
        &TINY.replace("hidden = [64, 64]", "hidden = [70000]"),
        "model.hidden must list",
    );
    case(
        &TINY.replace("hidden = [64, 64]", "hidden = [60000, 60000]"),
        "parameters",
    );
    case(
        &TINY.replace("batch_size = 256", "batch_size = 0"),
        "batch_size",
    );
    fails(
        &["train", "--config", s(&dir.join("missing.toml"))],
        "cannot read config",
    );

    std::fs::write(&config, TINY).unwrap();
    let nan = dir.join("nan.csv");
    std::fs::write(&nan, "x0,x1\n0.1,0.2\nNaN,0.3\n").unwrap();
    fails(
        &[
            "train",
            "--config",
            s(&config),
            "--data",
            s(&nan),
            "--out",
            o,
        ],
        "non-finite value",
    );
    assert!(!out.exists());

    // Rows of different lengths.
    let ragged = dir.join("ragged.csv");
    std::fs::write(&ragged, "x0,x1\n0.1,0.2\n0.3\n").unwrap();
    fails(
        &[
            "train",
            "--config",
            s(&config),
            "--data",
            s(&ragged),
            "--out",
            o,
        ],
        "line 3: 1 columns, expected 2",
    );
    assert!(!out.exists());

    // A forward process that does not reach near N(0, I) trains, with a warning.
    std::fs::write(&config, TINY.replace("end = 0.3", "end = 0.001")).unwrap();
    let warned = run(&[
        "train",
        "--config",
        s(&config),
        "--out",
        s(&dir.join("warned")),
        "--steps",
        "1",
        "--eval-n",
        "5",
    ]);
    let err = String::from_utf8_lossy(&warned.stderr);
    assert!(err.contains("warning: abar_T = 0.98"), "{err}");
    std::fs::write(&config, TINY).unwrap();

    fails(&["evaluate", "--run", s(&dir)], "not a run folder");
    fails(
        &[
            "data",
            "swiss-roll",
            "-n",
            "0",
            "--out",
            s(&dir.join("x.csv")),
        ],
        "-n must be at least 1",
    );
    fails(
        &[
            "data",
            "swiss-roll",
            "-n",
            "5",
            "--out",
            s(&dir.join("x.txt")),
        ],
        "use a .csv or .npy",
    );
    if !cfg!(feature = "wgpu") {
        fails(
            &[
                "train",
                "--config",
                s(&config),
                "--backend",
                "wgpu",
                "--out",
                o,
            ],
            "rebuild with `--features wgpu`",
        );
    }
}

#[test]
fn a_corrupt_model_file_is_reported() {
    let dir = workdir("corrupt");
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let out = dir.join("run");
    run(&[
        "train",
        "--config",
        s(&config),
        "--out",
        s(&out),
        "--steps",
        "0",
        "--eval-n",
        "10",
    ]);
    let model = out.join("model.bpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    fails(&["evaluate", "--run", s(&out)], "model.bpk");
    std::fs::write(&model, b"not a model").unwrap();
    fails(
        &[
            "sample",
            "--run",
            s(&out),
            "-n",
            "3",
            "--out",
            s(&dir.join("s.csv")),
        ],
        "model.bpk",
    );
    std::fs::remove_file(&model).unwrap();
    fails(&["evaluate", "--run", s(&out)], "model.bpk");
}

#[test]
fn binomial_heartbeat_through_the_cli() {
    let dir = workdir("heartbeat");
    let config = dir.join("hb.toml");
    std::fs::write(&config, TINY_HEARTBEAT).unwrap();
    let untrained = dir.join("untrained");
    let trained = dir.join("trained");
    let quick = ["--eval-n", "10", "--eval-samples", "10"];
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--config", s(&config), "--out", s(out)];
        args.extend_from_slice(&quick);
        args.extend_from_slice(extra);
        run(&args);
    };
    train(&untrained, &["--steps", "0"]);
    train(&trained, &[]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(trained.join("config.json")).unwrap()).unwrap();
    // pi defaults to the data's mean activity: 2 ones in 10 bins for every phase.
    assert_eq!(manifest["config"]["diffusion"]["pi"], 0.2);

    let eval = |run: &Path| {
        let out = bin()
            .args([
                "evaluate",
                "--run",
                s(run),
                "--n",
                "1000",
                "--samples",
                "2000",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json(&out)
    };
    let e0 = eval(&untrained);
    let e1 = eval(&trained);
    // L_null of a 10-bit sequence with two ones at pi = 0.2: 2 log2 0.2 + 8 log2 0.8
    let l_null = 2.0 * 0.2f64.log2() + 8.0 * 0.8f64.log2();
    assert!(
        (e1["l_null_bits"].as_f64().unwrap() - l_null).abs() < 1e-9,
        "{e1}"
    );
    assert!((e1["neg_data_entropy_bits"].as_f64().unwrap() + 5f64.log2()).abs() < 1e-12);
    let (k0, se0) = (
        e0["k_bits"].as_f64().unwrap(),
        e0["k_stderr_bits"].as_f64().unwrap(),
    );
    let (k1, se1) = (
        e1["k_bits"].as_f64().unwrap(),
        e1["k_stderr_bits"].as_f64().unwrap(),
    );
    assert!(
        k1 > k0 + 3.0 * (se0 * se0 + se1 * se1).sqrt(),
        "untrained {k0}, trained {k1}"
    );
    assert!(k1 < -(5f64.log2()) + 3.0 * se1, "K {k1} above -H(data)");
    // The untrained model is the forward kernel: its samples are i.i.d. Bernoulli(0.2) bits, of
    // which a valid heartbeat is rare (5 of 1024 patterns, each with probability 0.2^2 0.8^8).
    let v0 = e0["valid_fraction"].as_f64().unwrap();
    let v1 = e1["valid_fraction"].as_f64().unwrap();
    assert!(v0 < 0.05, "{v0}");
    assert!(v1 > v0 + 0.1, "valid share untrained {v0}, trained {v1}");
    assert_eq!(e1["phase_fractions"].as_array().unwrap().len(), 5);

    let samples = dir.join("s.npy");
    run(&[
        "sample",
        "--run",
        s(&trained),
        "-n",
        "50",
        "--out",
        s(&samples),
    ]);
    let bytes = std::fs::read(&samples).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let body = &bytes[10 + header_len..];
    assert_eq!(body.len(), 50 * 10 * 4);
    assert!(body.chunks(4).all(|c| {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        v == 0.0 || v == 1.0
    }));

    // Binomial diffusion refuses non-binary data, and Gaussian-only settings.
    let data = dir.join("roll.csv");
    run(&["data", "swiss-roll", "-n", "20", "--out", s(&data)]);
    let never = dir.join("never");
    fails(
        &[
            "train",
            "--config",
            s(&config),
            "--data",
            s(&data),
            "--out",
            s(&never),
        ],
        "is not 0 or 1",
    );
    std::fs::write(
        &config,
        TINY_HEARTBEAT.replace("process = \"binomial\"", ""),
    )
    .unwrap();
    fails(
        &["train", "--config", s(&config), "--out", s(&never)],
        "heartbeat data needs",
    );
    assert!(!never.exists());
}

/// Issue 5's options through the command line: the paper's RBF network, the learned schedule
/// (its betas written out and used by `evaluate`), the epsilon parametrization with a learned
/// variance under the hybrid loss, and `gradient-variance`.
#[test]
fn paper_rbf_learned_schedule_hybrid_and_gradient_variance() {
    let dir = workdir("issue5");
    // trains `config` into dir/name with a small end-of-training evaluation
    let train_into = |config: &Path, name: &str| -> PathBuf {
        let out = dir.join(name);
        run(&[
            "train",
            "--config",
            s(config),
            "--out",
            s(&out),
            "--eval-n",
            "500",
        ]);
        out
    };
    let eval = |run: &Path| {
        json(&common::run(&[
            "evaluate",
            "--run",
            s(run),
            "--n",
            "2000",
            "--json",
        ]))
    };

    // The RBF network at T = 40 with the paper's schedule: well above the null model.
    let rbf = write_config(
        &dir,
        "rbf.toml",
        &TINY
            .replace("steps = 20", "steps = 40")
            .replace(
                "{ kind = \"linear\", start = 1e-3, end = 0.3 }",
                "{ kind = \"paper\" }",
            )
            .replace(
                "hidden = [64, 64]",
                "kind = \"rbf\"\nhidden = [16]\ntime = \"readout\"",
            )
            .replace("steps = 1500", "steps = 3000"),
    );
    let rbf_run = train_into(&rbf, "rbf");
    let e = eval(&rbf_run);
    let gain = e["k_minus_l_null_bits"].as_f64().unwrap();
    assert!(gain > 0.3, "RBF: K - L_null = {gain}");
    // an RBF network needs one width and a readout per step
    let bad = write_config(
        &dir,
        "bad_rbf.toml",
        &TINY.replace("hidden = [64, 64]", "kind = \"rbf\"\nhidden = [16]"),
    );
    fails(
        &["train", "--config", s(&bad), "--out", s(&dir.join("x"))],
        "time = \"readout\"",
    );

    // The learned schedule: b_1 kept, the others moved, all in (0, 1); evaluate uses them.
    let learned = write_config(&dir, "learned.toml", &TINY.replace(
            "schedule = { kind = \"linear\", start = 1e-3, end = 0.3 }",
            "schedule = { kind = \"learned\", init = { kind = \"linear\", start = 1e-3, end = 0.3 } }",
        ));
    let learned_run = train_into(&learned, "learned");
    let text = std::fs::read_to_string(learned_run.join("betas.csv")).unwrap();
    let betas: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(betas.len(), 20);
    assert_eq!(betas[0], 1e-3);
    assert!(betas.iter().all(|&b| b > 0.0 && b < 1.0));
    let init: Vec<f64> = (0..20)
        .map(|i| 1e-3 + (0.3 - 1e-3) * i as f64 / 19.0)
        .collect();
    let moved = betas
        .iter()
        .zip(&init)
        .skip(1)
        .filter(|(b, i)| ((*b - *i) / *i).abs() > 0.01)
        .count();
    assert!(
        moved >= 10,
        "{moved} of 19 betas moved by more than 1 %: {betas:?}"
    );
    let k_learned = eval(&learned_run)["k_bits"].as_f64().unwrap();
    let summary = json_file(&learned_run.join("evaluation.json"));
    assert!(
        (k_learned - summary["k_bits"].as_f64().unwrap()).abs() < 0.1,
        "evaluate and the end of training agree on the learned schedule's K"
    );
    // a learned schedule is for Gaussian diffusion, trained on the bound
    let bad = dir.join("bad_learned.toml");
    let text = std::fs::read_to_string(&learned).unwrap();
    std::fs::write(&bad, text + "loss = \"hybrid\"\n").unwrap();
    fails(
        &["train", "--config", s(&bad), "--out", s(&dir.join("y"))],
        "loss",
    );

    // epsilon with its variance in [b~_t, b_t], trained with the hybrid loss
    let hybrid = write_config(
        &dir,
        "hybrid.toml",
        &TINY
            .replace(
                "parametrization = \"paper\"",
                "parametrization = \"epsilon\"",
            )
            .replace("batch_size = 256", "batch_size = 256\nloss = \"hybrid\""),
    );
    let hybrid_run = train_into(&hybrid, "hybrid");
    let e = eval(&hybrid_run);
    let gain = e["k_minus_l_null_bits"].as_f64().unwrap();
    assert!(
        gain > 0.0 && e["energy_distance"].as_f64().unwrap() < 0.05,
        "{e}"
    );
    let mse_on_epsilon = write_config(
        &dir,
        "mse.toml",
        &std::fs::read_to_string(&hybrid)
            .unwrap()
            .replace("\"hybrid\"", "\"mse\""),
    );
    fails(
        &[
            "train",
            "--config",
            s(&mse_on_epsilon),
            "--out",
            s(&dir.join("z")),
        ],
        "epsilon-fixed",
    );

    // importance sampling lowers the variance of the loss and of its gradient
    let g = json(&common::run(&[
        "gradient-variance",
        "--run",
        s(&rbf_run),
        "--batches",
        "100",
        "--batch-size",
        "128",
        "--json",
    ]));
    let (u, i) = (&g["uniform"], &g["importance"]);
    assert!(
        u["loss_variance"].as_f64().unwrap() > 1.5 * i["loss_variance"].as_f64().unwrap(),
        "{g}"
    );
    assert!(g["gradient_variance_ratio"].as_f64().unwrap() > 1.0, "{g}");
    fails(
        &["gradient-variance", "--run", s(&rbf_run), "--batches", "1"],
        "at least 2",
    );
}

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}
