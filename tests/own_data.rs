//! A user's own data through the command line: any dimension, the bound in the data's own
//! units, the baselines beside it, samples mapped back, pictures of images and coordinate
//! pairs, and the digits that ship in `datasets/`.

mod common;

use std::path::Path;

use common::*;
use diffusion_data::{Array2, io};

const BINARY: &str = r#"
[diffusion]
process = "binomial"
steps = 50
schedule = { kind = "reciprocal" }
parametrization = "paper"
[data]
kind = "file"
path = "PATH"
heldout_fraction = 0.2
[model]
hidden = [64]
time = "sinusoidal"
[train]
steps = 300
batch_size = 128
log_every = 100
optimizer = { kind = "adam", lr = 3e-3 }
"#;

const GAUSSIAN: &str = r#"
[diffusion]
steps = 50
schedule = { kind = "linear", start = 1e-3, end = 0.2 }
parametrization = "paper"
[data]
kind = "file"
path = "PATH"
heldout_fraction = 0.2
OPTIONS
[model]
hidden = [64, 64]
time = "sinusoidal"
[train]
steps = 300
batch_size = 128
log_every = 100
optimizer = { kind = "adam", lr = 3e-3 }
"#;

fn digits(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../datasets")
        .join(name)
        .display()
        .to_string()
}

/// The training and held-out rows of a run with seed 0 on `path`, split here as the run splits
/// them.
fn split_of(path: &str, fraction: f64) -> (diffusion_data::Array2, diffusion_data::Array2) {
    let points = io::read(Path::new(path)).unwrap();
    let mut rng = diffusion_data::rng(0, diffusion_models::data::streams::HELDOUT);
    diffusion_data::split(&points, fraction, &mut rng).unwrap()
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn binary_digits_get_bits_per_image_baselines_and_image_grids() {
    let dir = workdir("digits-binary");
    let out = train_quick(
        &BINARY.replace("PATH", &digits("digits_binary.npy")),
        &dir,
        "run",
    );
    let e = json(&run(&[
        "evaluate",
        "--run",
        s(&out),
        "--json",
        "--samples",
        "0",
    ]));
    assert_eq!((e["dim"].as_u64(), e["n"].as_u64()), (Some(64), Some(359)));
    let k = f(&e, "k_bits");
    assert!((f(&e, "k_bits_per_dim") - k / 64.0).abs() < 1e-9);
    // L_null is i.i.d. Bernoulli(pi) with pi the training rows' activity
    let (train, held) = split_of(&digits("digits_binary.npy"), 0.2);
    // the run keeps the held-out rows of that split, and no copy of the training rows
    assert_eq!(io::read(&out.join("heldout.npy")).unwrap(), held);
    assert!(!out.join("train.npy").exists());
    let pi = train.data.iter().map(|&v| v as f64).sum::<f64>() / train.data.len() as f64;
    let l_null = held
        .data
        .iter()
        .map(|&v| {
            if v >= 0.5 {
                pi.log2()
            } else {
                (1.0 - pi).log2()
            }
        })
        .sum::<f64>()
        / held.rows as f64;
    assert!((f(&e, "l_null_bits") - l_null).abs() < 1e-6);
    assert!(k > l_null, "K = {k} below L_null = {l_null}");
    assert!(e.get("k_bits_standardized").is_none());

    let b = json(&run(&["baselines", "--run", s(&out), "--json"]));
    let list = b["baselines"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    // independent bits with add-one smoothing, recomputed here
    let p: Vec<f64> = (0..64)
        .map(|j| {
            let ones = (0..train.rows).filter(|&i| train.row(i)[j] >= 0.5).count();
            (ones as f64 + 1.0) / (train.rows as f64 + 2.0)
        })
        .collect();
    let independent = (0..held.rows)
        .map(|i| {
            held.row(i)
                .iter()
                .zip(&p)
                .map(|(&v, p)| if v >= 0.5 { p.log2() } else { (1.0 - p).log2() })
                .sum::<f64>()
        })
        .sum::<f64>()
        / held.rows as f64;
    assert!((f(&list[0], "bits") - independent).abs() < 1e-9);
    // the mixture of 20 models the digits' classes: about ten bits better
    assert!(f(&list[1], "bits") > independent + 5.0, "{b}");

    let pictures = dir.join("pictures");
    run(&[
        "plot",
        "--run",
        s(&out),
        "--out",
        s(&pictures),
        "--what",
        "samples",
        "--image",
        "8x8",
        "--rows",
        "20",
    ]);
    // two panels of 10 x 2 images of 8 x 8 pixels at 6 px, 6 px apart
    check_picture(&pictures, "samples", (2 * (10 * 54 + 40), 40 + 2 * 54 + 50));
    fails(
        &[
            "plot",
            "--run",
            s(&out),
            "--out",
            s(&pictures),
            "--image",
            "7x7",
        ],
        "--image 7x7 has 49 pixels, the run's rows have 64 values",
    );
    fails_usage(
        &[
            "plot",
            "--run",
            s(&out),
            "--out",
            s(&pictures),
            "--image",
            "8by8",
        ],
        "not WIDTHxHEIGHT",
    );
}

#[test]
fn dequantised_digits_report_the_bound_of_the_discrete_images() {
    let dir = workdir("digits");
    let config = GAUSSIAN
        .replace("PATH", &digits("digits.npy"))
        .replace("OPTIONS", "standardize = \"global\"\ndequantize = true");
    let out = train_quick(&config, &dir, "run");
    let manifest = json_file(&out.join("config.json"));
    let scale = manifest["standardization"]["scale"].as_array().unwrap();
    assert_eq!(scale.len(), 64);
    let s0 = scale[0].as_f64().unwrap();
    assert!(
        scale.iter().all(|v| v.as_f64() == Some(s0)),
        "one global scale"
    );
    // the training rows' variance per pixel plus 1/12, averaged, is s^2
    let (train, _) = split_of(&digits("digits.npy"), 0.2);
    let var: f64 = (0..64)
        .map(|j| {
            let col: Vec<f64> = (0..train.rows).map(|i| train.row(i)[j] as f64).collect();
            let m = col.iter().sum::<f64>() / col.len() as f64;
            col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / col.len() as f64 + 1.0 / 12.0
        })
        .sum::<f64>()
        / 64.0;
    assert!((s0 - var.sqrt()).abs() < 1e-9, "{s0} vs {}", var.sqrt());

    let (e, k, ks, jac) = standardized_figures(&out);
    assert!((jac + 64.0 * s0.log2()).abs() < 1e-9);
    assert!((k - (ks + jac)).abs() < 1e-9);
    assert_eq!(e["dequantized"], true);
    // a bound on log P(image) of integer pixels 0..16: below 0 and above the uniform model
    assert!(k < 0.0 && k > -64.0 * 17f64.log2(), "{k}");
    let b = json(&run(&["baselines", "--run", s(&out), "--json"]));
    let list = b["baselines"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0]["name"].as_str().unwrap().contains("0..=16"));
    let pictures = dir.join("pictures");
    run(&[
        "plot",
        "--run",
        s(&out),
        "--out",
        s(&pictures),
        "--what",
        "samples",
        "--image",
        "8x8",
    ]);
    assert!(pictures.join("samples.png").is_file());
}

#[test]
fn a_logit_map_adds_its_jacobian_point_by_point() {
    let dir = workdir("digits-logit");
    let config = GAUSSIAN.replace("PATH", &digits("digits.npy")).replace(
        "OPTIONS",
        "standardize = \"global\"\ndequantize = true\nlogit_alpha = 0.05",
    );
    let out = train_quick(&config, &dir, "run");
    let manifest = json_file(&out.join("config.json"));
    let logit = &manifest["standardization"]["logit"];
    assert_eq!(
        (logit["levels"].as_f64(), logit["alpha"].as_f64()),
        (Some(17.0), Some(0.05))
    );
    let (_, k, ks, jac) = standardized_figures(&out);
    // the mean of K' + J(x) over points is the mean K' plus the mean J
    assert!((k - (ks + jac)).abs() < 1e-9);
    // J(x) = -64 log2 s + sum_i log2 |d logit(p_i) / dx_i| with p in [0.05, 0.95]:
    // each pixel's derivative lies in [0.9/17/(0.5 * 0.5), 0.9/17/(0.05 * 0.95)]
    let s0 = manifest["standardization"]["scale"][0].as_f64().unwrap();
    let per_pixel = (jac + 64.0 * s0.log2()) / 64.0;
    let (lo, hi) = (
        (0.9f64 / 17.0 / 0.25).log2(),
        (0.9f64 / 17.0 / 0.0475).log2(),
    );
    assert!(
        per_pixel > lo && per_pixel < hi,
        "{per_pixel} not in [{lo}, {hi}]"
    );
    // samples come back in the counts' range [0, 17)
    let samples = dir.join("s.npy");
    run(&[
        "sample",
        "--run",
        s(&out),
        "-n",
        "200",
        "--out",
        s(&samples),
    ]);
    let a = io::read(&samples).unwrap();
    assert!(
        a.data.iter().all(|&v| v > -1.0 && v < 18.0),
        "{:?}",
        &a.data[..8]
    );
    fails(
        &[
            "sample",
            "--run",
            s(&out),
            "-n",
            "2",
            "--out",
            s(&samples),
            "--observe",
            "0=3",
            "--observe-noise",
            "1",
        ],
        "no fixed scale through the logit map",
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, config.replace("dequantize = true\n", "")).unwrap();
    fails(
        &["train", "--config", s(&bad), "--out", s(&dir.join("never"))],
        "data.logit_alpha = 0.05 must lie in (0, 0.5), with dequantize = true",
    );
}

#[test]
fn samples_and_conditions_are_in_the_data_units() {
    let dir = workdir("units");
    // 3 columns far from N(0, 1), as a CSV with a header and a byte-order mark
    let mut rng = diffusion_data::rng(3, 0);
    let mut text = String::from("\u{feff}height,weight,age\n");
    for _ in 0..2000 {
        use rand::Rng as _;
        let (a, b, c): (f64, f64, f64) = (rng.random(), rng.random(), rng.random());
        text.push_str(&format!(
            "{},{},{}\n",
            170.0 + 20.0 * a,
            70.0 + 30.0 * b,
            40.0 + c
        ));
    }
    let data = dir.join("people.csv");
    std::fs::write(&data, text).unwrap();
    let out = train_quick(
        &GAUSSIAN.replace("PATH", s(&data)).replace("OPTIONS", ""),
        &dir,
        "run",
    );
    let samples = dir.join("s.npy");
    run(&[
        "sample",
        "--run",
        s(&out),
        "-n",
        "2000",
        "--out",
        s(&samples),
    ]);
    let a = io::read(&samples).unwrap();
    let mean =
        |a: &Array2, j: usize| (0..a.rows).map(|i| a.row(i)[j] as f64).sum::<f64>() / a.rows as f64;
    for (j, want, sd) in [(0, 180.0, 5.8), (1, 85.0, 8.7), (2, 40.5, 0.29)] {
        let m = mean(&a, j);
        assert!((m - want).abs() < sd, "column {j}: mean {m}, data {want}");
    }
    // a known value, given in the data's units, is held exactly in them
    run(&[
        "sample",
        "--run",
        s(&out),
        "-n",
        "200",
        "--out",
        s(&samples),
        "--known",
        "0=175",
    ]);
    let a = io::read(&samples).unwrap();
    assert!(
        (0..a.rows).all(|i| (a.row(i)[0] - 175.0).abs() < 1e-3),
        "{:?}",
        a.row(0)
    );
    let pictures = dir.join("pictures");
    run(&[
        "plot",
        "--run",
        s(&out),
        "--out",
        s(&pictures),
        "--what",
        "samples",
    ]);
    assert!(pictures.join("samples.png").is_file());
    let e = json(&run(&[
        "evaluate",
        "--run",
        s(&out),
        "--json",
        "--samples",
        "500",
    ]));
    // the default per-coordinate scales: -sum log2 s_i with s ~ 20/sqrt(12), 30/sqrt(12), 1/sqrt(12)
    let want = -[20.0f64, 30.0, 1.0]
        .iter()
        .map(|w| (w / 12f64.sqrt()).log2())
        .sum::<f64>();
    assert!((f(&e, "log_jacobian_bits") - want).abs() < 0.1, "{e}");
    assert!(f(&e, "energy_distance").is_finite());

    // options that do not fit
    fails(
        &[
            "baselines",
            "--run",
            s(&train_quick(common::TINY, &dir, "roll")),
        ],
        "baselines are for runs on file data",
    );
    let bits = dir.join("bits.toml");
    std::fs::write(
        &bits,
        BINARY
            .replace("PATH", &digits("digits_binary.npy"))
            .replace(
                "heldout_fraction = 0.2",
                "heldout_fraction = 0.2\nstandardize = \"global\"",
            ),
    )
    .unwrap();
    fails(
        &[
            "train",
            "--config",
            s(&bits),
            "--out",
            s(&dir.join("never")),
        ],
        "data.standardize and data.dequantize are for Gaussian runs",
    );
}

/// `evaluate --json` of a standardised run, with K, K in the standardised space and the
/// Jacobian.
fn standardized_figures(out: &Path) -> (serde_json::Value, f64, f64, f64) {
    let e = json(&run(&[
        "evaluate",
        "--run",
        s(out),
        "--json",
        "--samples",
        "0",
    ]));
    let figures = (
        f(&e, "k_bits"),
        f(&e, "k_bits_standardized"),
        f(&e, "log_jacobian_bits"),
    );
    (e, figures.0, figures.1, figures.2)
}

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}
