//! Shorter chains through the binary: respaced chains and DDIM in `sample`, `evaluate` and
//! `plot --what sampling-steps`, and their one-line errors.

mod common;

use common::*;

#[test]
fn respaced_and_ddim_chains() {
    let dir = workdir("sampling");
    let roll = train_quick(&TINY.replace("steps = 1500", "steps = 300"), &dir, "roll");
    let draw = |name: &str, extra: &[&str]| {
        let out = dir.join(format!("{name}.csv"));
        let mut args = vec!["sample", "--run", s(&roll), "-n", "300", "--out", s(&out)];
        args.extend_from_slice(extra);
        run(&args);
        std::fs::read(out).unwrap()
    };
    // every step kept (T = 20) is the ancestral sampler, draw for draw
    assert_eq!(
        draw("plain", &[]),
        draw("all", &["--sampler", "respaced", "--sample-steps", "20"])
    );
    // a shorter chain draws other points
    assert_ne!(
        draw("plain", &[]),
        draw("five", &["--sampler", "respaced", "--sample-steps", "5"])
    );
    // DDIM at eta = 0 is deterministic given x_T: the seed only draws x_T, so two seeds differ
    // but one seed twice is the same
    let ddim = ["--sampler", "ddim", "--sample-steps", "5"];
    assert_eq!(draw("d1", &ddim), draw("d2", &ddim));
    let mut other = ddim.to_vec();
    other.extend_from_slice(&["--seed", "3"]);
    assert_ne!(draw("d1", &ddim), draw("d3", &other));

    // evaluate: the respaced chain's own bound
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--run",
            s(&roll),
            "--n",
            "500",
            "--samples",
            "500",
            "--json",
        ];
        args.extend_from_slice(extra);
        json(&run(&args))
    };
    let full = eval(&[]);
    let all = eval(&["--sampler", "respaced", "--sample-steps", "20"]);
    let short = eval(&["--sampler", "respaced", "--sample-steps", "4"]);
    assert_eq!(all["sampler"], "respaced, 20 steps");
    let k = |e: &serde_json::Value| {
        (
            e["k_bits"].as_f64().unwrap(),
            e["k_stderr_bits"].as_f64().unwrap(),
        )
    };
    // every step kept is the full chain, its bound too: the same draws, the same K to rounding
    let ((k0, s0), (k1, s1)) = (k(&full), k(&all));
    assert!(
        (k0 - k1).abs() < 1e-3 && (s0 - s1).abs() < 1e-3,
        "{full} {all}"
    );
    // 4 of 20 steps cost the bound (0.17 bits on this briefly trained model)
    let (k4, _) = k(&short);
    assert!(k4 < k0 - 0.05, "{full} {short}");

    // the picture of quality and bound against the steps
    let pictures = dir.join("pictures");
    let listed = run(&[
        "plot",
        "--run",
        s(&roll),
        "--out",
        s(&pictures),
        "--what",
        "sampling-steps",
        "-n",
        "200",
    ]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("sampling-steps.png") && listed.contains("sampling-steps-bound.png"),
        "{listed}"
    );
    check_picture(&pictures, "sampling-steps", (900, 560));

    // one-line errors
    let out = dir.join("x.csv");
    let sample = |extra: &[&str], want: &str| {
        let mut args = vec!["sample", "--run", s(&roll), "-n", "5", "--out", s(&out)];
        args.extend_from_slice(extra);
        fails(&args, want);
    };
    sample(&["--sampler", "ddim"], "need --sample-steps");
    sample(&["--sample-steps", "5"], "needs --sampler respaced or ddim");
    sample(&["--sampler", "respaced", "--sample-steps", "21"], "T = 20");
    sample(
        &["--sampler", "ddim", "--sample-steps", "5", "--eta", "2"],
        "--eta 2",
    );
    // a respaced chain is a process of its own: conditioning runs on it
    let given = draw(
        "given",
        &[
            "--sampler",
            "respaced",
            "--sample-steps",
            "5",
            "--known",
            "0=1",
        ],
    );
    let given = String::from_utf8(given).unwrap();
    assert_eq!(given.lines().skip(1).count(), 300);
    for line in given.lines().skip(1) {
        let x: f64 = line.split(',').next().unwrap().parse().unwrap();
        assert!((x - 1.0).abs() < 1e-5, "{line}");
    }
    let beat = train_quick(
        &TINY_HEARTBEAT.replace("steps = 1500", "steps = 50"),
        &dir,
        "beat",
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
            "--sampler",
            "ddim",
            "--sample-steps",
            "5",
        ],
        "DDIM is for Gaussian runs",
    );
    // respaced bits are bits, and conditioned ones hold their known bits
    let bits = |extra: &[&str]| {
        let mut args = vec!["sample", "--run", s(&beat), "-n", "50", "--out", s(&out)];
        args.extend_from_slice(&["--sampler", "respaced", "--sample-steps", "8"]);
        args.extend_from_slice(extra);
        run(&args);
        let text = std::fs::read_to_string(&out).unwrap();
        let rows: Vec<Vec<String>> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(String::from).collect())
            .collect();
        assert_eq!(rows.len(), 50);
        assert!(rows.iter().flatten().all(|v| v == "0" || v == "1"));
        rows
    };
    bits(&[]);
    for row in bits(&["--known", "0=1,3=0"]) {
        assert_eq!((row[0].as_str(), row[3].as_str()), ("1", "0"), "{row:?}");
    }
}
