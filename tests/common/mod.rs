//! Helpers shared by the command-line tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tiny Gaussian Swiss-roll run.
pub const TINY: &str = r#"
[diffusion]
steps = 20
schedule = { kind = "linear", start = 1e-3, end = 0.3 }
parametrization = "paper"
[data]
kind = "swiss-roll"
noise = 0.5
[model]
hidden = [64, 64]
[train]
steps = 1500
batch_size = 256
log_every = 500
optimizer = { kind = "adam", lr = 3e-3 }
"#;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffusion"))
}

/// A fresh temporary folder (`tempfile`), removed when the test ends.
pub struct WorkDir(tempfile::TempDir);

impl std::ops::Deref for WorkDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for WorkDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

pub fn workdir(name: &str) -> WorkDir {
    WorkDir(
        tempfile::Builder::new()
            .prefix(&format!("diffusion-e2e-{name}-"))
            .tempdir()
            .unwrap(),
    )
}

pub fn run(args: &[&str]) -> Output {
    let out = bin().args(args).output().expect("binary runs");
    assert!(
        out.status.success(),
        "diffusion {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail with one line on stderr starting with `error:` and no panic.
pub fn fails(args: &[&str], want: &str) {
    fails_with(args, want, 1)
}

/// Like [`fails`], for a command line that does not parse (exit code 2).
pub fn fails_usage(args: &[&str], want: &str) {
    fails_with(args, want, 2)
}

fn fails_with(args: &[&str], want: &str, code: i32) {
    let out = bin().args(args).output().expect("binary runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(want), "{args:?}: {err}");
}

/// Writes `text` as `dir/name` and returns the path.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny binomial heartbeat run (10 bits, period 5, T = 40).
pub const TINY_HEARTBEAT: &str = r#"
[diffusion]
process = "binomial"
steps = 40
schedule = { kind = "reciprocal" }
parametrization = "paper"
[data]
kind = "heartbeat"
length = 10
period = 5
[model]
hidden = [32, 32]
time = "embedding"
[train]
steps = 1500
batch_size = 128
log_every = 500
optimizer = { kind = "adam", lr = 3e-3 }
"#;

/// Width and height from a PNG's IHDR chunk, after checking the signature.
pub fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > 1000, "{} is nearly empty", path.display());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// Width and height of an SVG's root element, after checking it is one closed document.
pub fn svg_size(path: &Path) -> (u32, u32) {
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

/// Checks that `dir/name.png` and `dir/name.svg` are pictures of `size`.
pub fn check_picture(dir: &Path, name: &str, size: (u32, u32)) {
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

/// Writes `config_text` as `dir/name.toml` and trains it into `dir/name`, with a quick final
/// evaluation; returns the run folder.
pub fn train_quick(config_text: &str, dir: &Path, name: &str) -> PathBuf {
    let config = write_config(dir, &format!("{name}.toml"), config_text);
    let out = dir.join(name);
    run(&[
        "train",
        "--config",
        s(&config),
        "--out",
        s(&out),
        "--eval-n",
        "10",
        "--eval-samples",
        "10",
    ]);
    out
}
