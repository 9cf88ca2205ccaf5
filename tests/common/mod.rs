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
