//! `diffusion plot` through the binary: every picture is a valid PNG and SVG of the size its
//! layout promises, and pictures that do not fit a run are refused.

use std::path::Path;

mod common;

use common::*;

#[test]
fn every_picture_has_its_size() {
    let dir = workdir("plots");
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY.replace("steps = 1500", "steps = 60")).unwrap();
    let roll = dir.join("roll");
    let quick = ["--eval-n", "10", "--eval-samples", "10"];
    let train = |config: &Path, out: &Path| {
        let mut args = vec!["train", "--config", s(config), "--out", s(out)];
        args.extend_from_slice(&quick);
        run(&args);
    };
    train(&config, &roll);
    let beat_config = dir.join("hb.toml");
    std::fs::write(
        &beat_config,
        TINY_HEARTBEAT.replace("steps = 1500", "steps = 60"),
    )
    .unwrap();
    let beat = dir.join("beat");
    train(&beat_config, &beat);

    // Every picture that fits the Swiss-roll run, with a second run on the loss chart.
    let pictures = dir.join("roll-pictures");
    let out = run(&[
        "plot",
        "--run",
        s(&roll),
        "--run",
        s(&beat),
        "--out",
        s(&pictures),
        "-n",
        "300",
    ]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), 6, "{listed}");
    // T = 20: panels at t = 0, 2, ..., 20 in two rows; drift at t = 20, 10, 2.
    check_picture(&pictures, "trajectory", (90 + 11 * 200, 40 + 2 * 200));
    check_picture(&pictures, "drift", (3 * 400, 40 + 400));
    check_picture(&pictures, "loss", (900, 560));

    // The heartbeat run: rasters of 40 rows of 10 bits.
    let rasters = dir.join("beat-pictures");
    run(&[
        "plot",
        "--run",
        s(&beat),
        "--out",
        s(&rasters),
        "--steps",
        "0,20,40",
        "--align",
    ]);
    // Narrow rasters are as wide as their titles (11 px a character, 20 px of margin).
    let height = 40 + 30 + 40 * 8 + 20;
    let title = "beat: data and samples, aligned on the first pulse";
    check_picture(&rasters, "samples", (11 * title.len() as u32 + 20, height));
    let title = "beat: data noised by q(x_t | x_0)";
    assert!(11 * title.len() as u32 + 20 > 3 * (10 * 8 + 40));
    check_picture(&rasters, "noising", (11 * title.len() as u32 + 20, height));
    check_picture(&rasters, "loss", (900, 560));

    // The same picture twice is the same file (fixed sizes, seeded draws).
    let again = dir.join("again");
    run(&[
        "plot",
        "--run",
        s(&beat),
        "--out",
        s(&again),
        "--steps",
        "0,20,40",
        "--align",
    ]);
    for f in ["samples.png", "noising.svg"] {
        assert_eq!(
            std::fs::read(rasters.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }

    fails(
        &[
            "plot",
            "--run",
            s(&beat),
            "--out",
            s(&again),
            "--what",
            "drift",
        ],
        "does not fit",
    );
    fails(
        &[
            "plot",
            "--run",
            s(&roll),
            "--out",
            s(&again),
            "--steps",
            "21",
        ],
        "beyond T = 20",
    );
}
