//! Property tests (fuzzing) of config parsing: arbitrary text, and every shipped config with one
//! value replaced by something random, go through parsing, validation, the size check and the
//! construction of the diffusion without a panic; a config that passes all of them has a
//! diffusion of the length it asks for.

use diffusion_data::ImageShape;
use diffusion_models::{DataConfig, RunConfig, RunManifest};
use proptest::prelude::*;

/// Every config in `configs/` (checked against the folder by `every_config_is_here`).
const SHIPPED: [(&str, &str); 16] = [
    (
        "swiss_roll.toml",
        include_str!("../../../configs/swiss_roll.toml"),
    ),
    (
        "swiss_roll_thin.toml",
        include_str!("../../../configs/swiss_roll_thin.toml"),
    ),
    (
        "swiss_roll_learned.toml",
        include_str!("../../../configs/swiss_roll_learned.toml"),
    ),
    (
        "swiss_roll_epsilon.toml",
        include_str!("../../../configs/swiss_roll_epsilon.toml"),
    ),
    (
        "swiss_roll_paper_thin.toml",
        include_str!("../../../configs/swiss_roll_paper_thin.toml"),
    ),
    (
        "swiss_roll_presentation.toml",
        include_str!("../../../configs/swiss_roll_presentation.toml"),
    ),
    (
        "swiss_roll_paper.toml",
        include_str!("../../../configs/swiss_roll_paper.toml"),
    ),
    (
        "swiss_roll_t1000.toml",
        include_str!("../../../configs/swiss_roll_t1000.toml"),
    ),
    (
        "heartbeat.toml",
        include_str!("../../../configs/heartbeat.toml"),
    ),
    (
        "heartbeat_best.toml",
        include_str!("../../../configs/heartbeat_best.toml"),
    ),
    (
        "heartbeat_paper_model.toml",
        include_str!("../../../configs/heartbeat_paper_model.toml"),
    ),
    ("digits.toml", include_str!("../../../configs/digits.toml")),
    (
        "digits_binary.toml",
        include_str!("../../../configs/digits_binary.toml"),
    ),
    ("mnist.toml", include_str!("../../../configs/mnist.toml")),
    (
        "mnist_binary.toml",
        include_str!("../../../configs/mnist_binary.toml"),
    ),
    (
        "mnist_paper.toml",
        include_str!("../../../configs/mnist_paper.toml"),
    ),
];

/// Parse, validate, size-check and build: must not panic.
fn check(text: &str) {
    let Ok(config) = RunConfig::from_toml(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    // image networks get MNIST's shape, other file runs 2-D rows
    let image = config.model.kind.is_image().then_some(ImageShape {
        channels: 1,
        height: 28,
        width: 28,
    });
    let dim = match (&config.data, image) {
        (DataConfig::Heartbeat { length, .. }, _) => *length,
        (_, Some(shape)) => shape.len(),
        _ => 2,
    };
    let mut manifest = RunManifest::new(config, dim, "flex").with_image(image);
    if manifest.config.diffusion.pi.is_none() {
        manifest.config.diffusion.pi = Some(0.3);
    }
    if manifest.check_model_size().is_err() {
        return;
    }
    let bound = manifest
        .bound()
        .expect("a validated config builds its diffusion");
    assert_eq!(bound.steps(), manifest.config.diffusion.steps);
    let t = &manifest.config.train;
    for step in [0, t.steps / 2, t.steps] {
        let lr = t.lr_schedule.rate(t.optimizer.lr, step, t.steps);
        assert!(lr.is_finite() && lr >= 0.0, "lr {lr} at step {step}");
    }
}

/// Byte ranges of the values in `text`: numbers and quoted strings, also inside inline tables.
fn value_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        let starts_string = bytes[i] == b'"';
        if starts_number || starts_string {
            let mut j = i + 1;
            if starts_string {
                while j < bytes.len() && bytes[j] != b'"' {
                    j += 1;
                }
                j = (j + 1).min(bytes.len());
            } else {
                while j < bytes.len() && b"0123456789._eE+-".contains(&bytes[j]) {
                    j += 1;
                }
            }
            spans.push((i, j));
            i = j;
        } else {
            i += 1;
        }
    }
    spans
}

/// `text` with line `i` dropped (`how` 0), doubled (1) or moved to the end (2).
fn mutate_line(text: &str, i: usize, how: usize) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    let line = lines[i];
    match how {
        0 => {
            lines.remove(i);
        }
        1 => lines.insert(i, line),
        _ => {
            lines.remove(i);
            lines.push(line);
        }
    }
    lines.join("\n")
}

fn replacement() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        (0u64..5000).prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        (-2.0f64..2.0).prop_map(|v| format!("{v:?}")),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "2",
            "nan",
            "inf",
            "-inf",
            "0.0",
            "1.0",
            "1e-300",
            "\"x\"",
            "\"linear\"",
            "\"cosine\"",
            "\"learned\"",
            "\"binomial\"",
            "\"gaussian\"",
            "\"direct\"",
            "\"heartbeat\"",
            "\"readout\"",
            "[]",
            "[0]",
            "{}",
            "true",
            "\"\"",
        ])
        .prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// A line of a shipped config dropped, doubled or moved to the end (a key lost, given twice,
    /// or put under another table): valid TOML that validation must judge, not only the parser.
    #[test]
    fn lines_dropped_doubled_or_moved_never_panic(
        which in 0..SHIPPED.len(),
        at in any::<prop::sample::Index>(),
        how in 0..3usize,
    ) {
        check(&mutate_line(SHIPPED[which].1, at.index(SHIPPED[which].1.lines().count()), how));
    }

    #[test]
    fn one_value_replaced_never_panics(
        which in 0..SHIPPED.len(),
        at in any::<prop::sample::Index>(),
        with in replacement(),
    ) {
        let text = SHIPPED[which].1;
        let spans = value_spans(text);
        let (a, b) = spans[at.index(spans.len())];
        check(&format!("{}{}{}", &text[..a], with, &text[b..]));
    }

    #[test]
    fn cut_configs_never_panic(which in 0..SHIPPED.len(), at in any::<prop::sample::Index>()) {
        let text = SHIPPED[which].1;
        let mut i = at.index(text.len() + 1);
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        check(&text[..i]);
    }
}

#[test]
fn the_shipped_configs_pass() {
    for (name, text) in SHIPPED {
        let config = RunConfig::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(value_spans(SHIPPED[0].1).len() > 10);
}

/// The line mutations reach validation: some mutants of every config still parse and pass it (a
/// dropped comment, a key with a default), and some parse but fail it (a required key lost).
#[test]
fn line_mutations_reach_validation() {
    let mut refused = 0;
    for (name, text) in SHIPPED {
        let mut valid = 0;
        for i in 0..text.lines().count() {
            for how in 0..3 {
                if let Ok(config) = RunConfig::from_toml(&mutate_line(text, i, how)) {
                    match config.validate() {
                        Ok(()) => valid += 1,
                        Err(_) => refused += 1,
                    }
                }
            }
        }
        assert!(valid > 0, "{name}: no mutant passes validation");
    }
    assert!(
        refused > 0,
        "no mutant of any config parses and fails validation"
    );
}

/// A config added to `configs/` without a line in [`SHIPPED`] fails here, so none goes unfuzzed.
#[test]
fn every_config_is_here() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut on_disk: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SHIPPED.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(listed, on_disk);
}
