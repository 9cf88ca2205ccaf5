//! Conditioned sampling (paper section 2.5) through the binary: `sample --known/--observe`,
//! `evaluate-conditional` against exact conditionals, `plot --what conditional`, and the
//! one-line errors.

use std::path::Path;

mod common;

use common::*;

fn read_rows(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// ½ Σ |f − p| + ½ (1 − Σ f), from the report's own numbers.
fn total_variation(e: &serde_json::Value) -> f64 {
    let f = floats(&e["phase_fractions"]);
    let p = floats(&e["exact_phases"]);
    let invalid = 1.0 - f.iter().sum::<f64>();
    0.5 * (f.iter().zip(&p).map(|(a, b)| (a - b).abs()).sum::<f64>() + invalid)
}

#[test]
fn heartbeat_inpainting_and_denoising() {
    let dir = workdir("cond-beat");
    let beat = train_quick(
        &TINY_HEARTBEAT.replace("steps = 1500", "steps = 400"),
        &dir,
        "beat",
    );
    // known bits are held: every sample has them
    let out = dir.join("s.csv");
    for extra in [&[][..], &["--resample"], &["--condition-mode", "forward"]] {
        let mut args = vec![
            "sample",
            "--run",
            s(&beat),
            "-n",
            "300",
            "--out",
            s(&out),
            "--known",
            "2=1,4=0",
        ];
        args.extend_from_slice(extra);
        run(&args);
        let rows = read_rows(&out);
        assert_eq!(rows.len(), 300);
        assert!(rows.iter().all(|r| r[2] == 1.0 && r[4] == 0.0), "{extra:?}");
    }
    // the exact conditional: a 1 at bin 2 fixes phase 2
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "evaluate-conditional",
            "--run",
            s(&beat),
            "-n",
            "2000",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&run(&args))
    };
    let e = eval(&["--known", "2=1", "--resample"]);
    assert_eq!(floats(&e["exact_phases"]), [0.0, 0.0, 1.0, 0.0, 0.0]);
    assert_eq!(e["samples"], 2000);
    assert_eq!(e["mode"], "constant");
    assert_eq!(e["resampled"], true);
    let tv = e["total_variation"].as_f64().unwrap();
    assert!((tv - total_variation(&e)).abs() < 1e-12, "{e}");
    // every valid sample agrees with the known bit, so the consistent share is phase 2's
    let f = floats(&e["phase_fractions"]);
    assert!((e["valid_consistent_fraction"].as_f64().unwrap() - f[2]).abs() < 1e-12);
    // noisy bits (10 bins: phase p has ones at p and p + 5): 1 at 3, 1 at 8, 0 at 0, e = 0.1
    let e = eval(&[
        "--observe",
        "3=1,8=1,0=0",
        "--observe-noise",
        "0.1",
        "--condition-mode",
        "likelihood",
    ]);
    let w = [0.001, 0.009, 0.009, 0.729, 0.009];
    let total: f64 = w.iter().sum();
    for (got, want) in floats(&e["exact_phases"]).iter().zip(w) {
        assert!((got - want / total).abs() < 1e-12, "{e}");
    }
    assert_eq!(e["mode"], "likelihood");
    assert!((e["total_variation"].as_f64().unwrap() - total_variation(&e)).abs() < 1e-12);

    // rasters of the exact conditional beside the samples
    let pictures = dir.join("pictures");
    let listed = run(&[
        "plot",
        "--run",
        s(&beat),
        "--out",
        s(&pictures),
        "--what",
        "conditional",
        "--known",
        "2=1",
        "--rows",
        "20",
    ]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("conditional.png"));
    // two raster panels of 20 rows, as wide as the title
    let title = "beat: samples of p(x_0) r(x_0), constant r, beside the exact conditional";
    check_picture(
        &pictures,
        "conditional",
        (11 * title.len() as u32 + 20, 40 + 30 + 20 * 8 + 20),
    );

    // bad conditions: one line each
    fails(
        &[
            "sample",
            "--run",
            s(&beat),
            "-n",
            "5",
            "--out",
            s(&out),
            "--known",
            "2=0.5",
        ],
        "a bit must be 0 or 1",
    );
    fails(
        &[
            "sample",
            "--run",
            s(&beat),
            "-n",
            "5",
            "--out",
            s(&out),
            "--known",
            "10=1",
        ],
        "the data have 10",
    );
    fails(
        &[
            "evaluate-conditional",
            "--run",
            s(&beat),
            "--known",
            "2=1,3=1",
        ],
        "no heartbeat sequence agrees",
    );
    fails(
        &["evaluate-conditional", "--run", s(&beat)],
        "needs a condition",
    );
    let twisted = ["--known", "7=1", "--condition-mode", "twisted"];
    let sample = ["sample", "--run", s(&beat), "-n", "5", "--out", s(&out)];
    fails(
        &[&sample[..], &twisted[..]].concat(),
        "it needs resampling (--resample)",
    );
    fails(
        &[&sample[..], &twisted[..], &["--resample"][..]].concat(),
        "the twisted mode is for Gaussian runs",
    );
    fails(
        &[
            "sample",
            "--run",
            s(&beat),
            "-n",
            "5",
            "--out",
            s(&out),
            "--known",
            "2=1",
            "--resample",
            "--condition-mode",
            "forward",
        ],
        "--resample",
    );
}

#[test]
fn swiss_roll_inpainting_and_denoising() {
    let dir = workdir("cond-roll");
    let roll = train_quick(&TINY.replace("steps = 1500", "steps = 300"), &dir, "roll");
    let out = dir.join("s.csv");
    // a known coordinate is exact in every sample, whatever the mode
    for mode in [
        &["--condition-mode", "constant"][..],
        &["--condition-mode", "likelihood"],
        &["--condition-mode", "likelihood", "--resample"],
        &["--condition-mode", "twisted", "--resample"],
    ] {
        let args = ["sample", "--run", s(&roll), "-n", "400", "--out", s(&out)];
        run(&[&args[..], &["--known", "0=0.25"], mode].concat());
        let rows = read_rows(&out);
        assert!(rows.iter().all(|r| r[0] == 0.25), "{mode:?}");
    }
    // one condition per sample from a file (NaN: not known)
    let known = dir.join("known.csv");
    std::fs::write(&known, "x0,x1\n0.5,nan\nnan,-1\n2,3\n").unwrap();
    run(&[
        "sample",
        "--run",
        s(&roll),
        "-n",
        "3",
        "--out",
        s(&out),
        "--known-file",
        s(&known),
    ]);
    let rows = read_rows(&out);
    assert_eq!(
        (rows[0][0], rows[1][1], rows[2][0], rows[2][1]),
        (0.5, -1.0, 2.0, 3.0)
    );
    fails(
        &[
            "sample",
            "--run",
            s(&roll),
            "-n",
            "4",
            "--out",
            s(&out),
            "--known-file",
            s(&known),
        ],
        "3 rows for 4 samples",
    );
    // denoising: samples, their mean and the exact posterior's, and the energy floor
    let e = json(&run(&[
        "evaluate-conditional",
        "--run",
        s(&roll),
        "-n",
        "1000",
        "--observe=-1.6,0",
        "--observe-noise",
        "0.3",
        "--json",
    ]));
    assert!(e["energy_distance"].as_f64().unwrap() > 0.0);
    assert!(e["energy_distance_floor"].as_f64().unwrap() > 0.0);
    let exact = floats(&e["exact_mean"]);
    // the posterior mean lies between the observation and the roll's arm near it
    assert!((exact[0] + 1.6).abs() < 0.3 && exact[1].abs() < 0.3, "{e}");
    // inpainting: the exact mean holds the known coordinate
    let e = json(&run(&[
        "evaluate-conditional",
        "--run",
        s(&roll),
        "-n",
        "500",
        "--known",
        "0=0.25",
        "--json",
    ]));
    assert!((floats(&e["exact_mean"])[0] - 0.25).abs() < 1e-12, "{e}");
    assert!((floats(&e["sample_mean"])[0] - 0.25).abs() < 1e-12, "{e}");
    // the energy distance over its floor: the mean of 5 sets (the default) over the mean of 32
    // exact pairs, both with their spread; the known coordinate has no spread at all
    assert_eq!(e["repeats"].as_u64(), Some(5), "{e}");
    let (ed, floor) = (
        e["energy_distance"].as_f64().unwrap(),
        e["energy_distance_floor"].as_f64().unwrap(),
    );
    assert!(
        (e["energy_ratio"].as_f64().unwrap() - ed / floor).abs() < 1e-12,
        "{e}"
    );
    assert!(e["energy_ratio_stderr"].as_f64().unwrap() > 0.0, "{e}");
    assert!(e["energy_distance_stderr"].as_f64().unwrap() > 0.0, "{e}");
    assert!(e["energy_distance_floor_sd"].as_f64().unwrap() > 0.0, "{e}");
    assert_eq!(floats(&e["sample_sd"])[0], 0.0, "{e}");
    assert_eq!(floats(&e["exact_sd"])[0], 0.0, "{e}");
    assert!(floats(&e["exact_sd"])[1] > 0.1, "{e}");
    // the model's own conditional by rejection from unconditioned samples: with a known value
    // only, its distance to the truth and the samples' distance to it
    let with_slice = |condition: &[&str]| {
        let mut args = vec![
            "evaluate-conditional",
            "--run",
            s(&roll),
            "-n",
            "300",
            "--repeats",
            "1",
            "--model-slice",
            "20000",
            "--json",
        ];
        args.extend_from_slice(condition);
        json(&run(&args))
    };
    let e = with_slice(&["--known", "0=0.25"]);
    let slice = e["model_slice_samples"].as_u64().unwrap();
    assert!(slice > 0 && slice < 20_000, "{e}");
    assert!(e["model_slice_ratio"].as_f64().unwrap() > 0.0, "{e}");
    assert!(e["sampler_to_model_ratio"].as_f64().unwrap() > 0.0, "{e}");
    assert_eq!(floats(&e["model_slice_sd"])[0], 0.0, "{e}");
    let e = with_slice(&["--observe=-1.6,0", "--observe-noise", "0.3"]);
    assert!(e.get("model_slice_samples").is_none(), "{e}");
    for (flag, value) in [("--repeats", "0"), ("--particles", "0")] {
        fails(
            &[
                "evaluate-conditional",
                "--run",
                s(&roll),
                "--known",
                "0=0.25",
                flag,
                value,
            ],
            "must be at least 1",
        );
    }
    // renoised chains: the known value held; no draw at all, or with resampling, refused
    let renoised = json(&run(&[
        "evaluate-conditional",
        "--run",
        s(&roll),
        "-n",
        "300",
        "--repeats",
        "1",
        "--known",
        "0=0.25",
        "--renoise",
        "3",
        "--renoise-jump",
        "4",
        "--json",
    ]));
    assert_eq!(floats(&renoised["sample_sd"])[0], 0.0, "{renoised}");
    assert!(floats(&renoised["sample_sd"])[1] > 0.1, "{renoised}");
    assert_eq!(
        renoised["renoised"],
        serde_json::json!([3, 4]),
        "{renoised}"
    );
    for (extra, message) in [
        (&["--renoise", "0"][..], "at least once"),
        (
            &["--renoise", "2", "--renoise-jump", "0"][..],
            "at least once",
        ),
        (&["--renoise", "2", "--resample"][..], "do not go together"),
        (
            &["--renoise-jump", "5"][..],
            "--renoise-jump needs --renoise",
        ),
    ] {
        let mut args = vec![
            "evaluate-conditional",
            "--run",
            s(&roll),
            "--known",
            "0=0.25",
        ];
        args.extend_from_slice(extra);
        fails(&args, message);
    }
    for (extra, message) in [
        (&["--renoise", "2"][..], "give a condition"),
        (
            &["--known", "0=0.25", "--resample", "--particles", "0"][..],
            "--particles must be at least 1",
        ),
    ] {
        let mut args = vec!["sample", "--run", s(&roll), "-n", "4", "--out", s(&out)];
        args.extend_from_slice(extra);
        fails(&args, message);
    }
    // one system of 600 particles against two of 300 (the default chunk would be one of 600)
    let (one, two) = (dir.join("one.csv"), dir.join("two.csv"));
    for (path, particles) in [(&one, "600"), (&two, "300")] {
        run(&[
            "sample",
            "--run",
            s(&roll),
            "-n",
            "600",
            "--out",
            s(path),
            "--known",
            "0=0.25",
            "--resample",
            "--particles",
            particles,
        ]);
    }
    let (one, two) = (read_rows(&one), read_rows(&two));
    assert_eq!((one.len(), two.len()), (600, 600));
    assert!(one.iter().chain(&two).all(|r| r[0] == 0.25));
    assert_ne!(one, two, "the particle systems differ, so do the samples");
    // scatter panels: the data, the exact conditional, the samples
    let pictures = dir.join("pictures");
    run(&[
        "plot",
        "--run",
        s(&roll),
        "--out",
        s(&pictures),
        "--what",
        "conditional",
        "--known",
        "0=0.25",
        "-n",
        "200",
    ]);
    // one row of three scatter panels: the data, the exact conditional, the samples
    check_picture(&pictures, "conditional", (90 + 3 * 200, 40 + 200));
    fails(
        &[
            "plot",
            "--run",
            s(&roll),
            "--out",
            s(&pictures),
            "--what",
            "conditional",
        ],
        "needs a condition",
    );
    fails(
        &[
            "sample",
            "--run",
            s(&roll),
            "-n",
            "5",
            "--out",
            s(&out),
            "--observe",
            "1,2",
        ],
        "need --observe-noise",
    );
}
