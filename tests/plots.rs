//! `diffusion plot` through the binary: every picture is a valid PNG and SVG of the size its
//! layout promises, and pictures that do not fit a run are refused.

use std::path::Path;

mod common;

use common::*;

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > 1000, "{} is nearly empty", path.display());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// Width and height of an SVG's root element, after checking it is one closed document.
fn svg_size(path: &Path) -> (u32, u32) {
    let text = std::fs::read_to_string(path).unwrap();
    let root = &text[text.find("<svg").expect("an <svg> element")..];
    assert!(text.trim_end().ends_with("</svg>"), "{}", path.display());
    let attr = |name: &str| -> u32 {
        let at = root.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        root[at..root[at..].find('"').unwrap() + at]
            .parse()
            .unwrap()
    };
    (attr("width"), attr("height"))
}

fn check(dir: &Path, name: &str, size: (u32, u32)) {
    assert_eq!(
        png_size(&dir.join(format!("{name}.png"))),
        size,
        "{name}.png"
    );
    assert_eq!(
        svg_size(&dir.join(format!("{name}.svg"))),
        size,
        "{name}.svg"
    );
}

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
    check(&pictures, "trajectory", (90 + 11 * 200, 40 + 2 * 200));
    check(&pictures, "drift", (3 * 400, 40 + 400));
    check(&pictures, "loss", (900, 560));

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
    check(&rasters, "samples", (11 * title.len() as u32 + 20, height));
    let title = "beat: data noised by q(x_t | x_0)";
    assert!(11 * title.len() as u32 + 20 > 3 * (10 * 8 + 40));
    check(&rasters, "noising", (11 * title.len() as u32 + 20, height));
    check(&rasters, "loss", (900, 560));

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
