//! The wgpu build on a machine without a GPU driver (needs `--features wgpu`; no driver needed):
//! the Vulkan loader is pointed at a driver file that does not exist, so wgpu finds no adapter.
//! `diffusion train --backend wgpu` must then end within seconds with one line saying what to
//! install, exit code 1, and no run folder. A hang fails the test at its deadline instead of
//! blocking CI.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TINY, s, workdir, write_config};

/// Runs the binary with no Vulkan driver, killing it after `deadline`.
fn without_driver(args: &[&str], deadline: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffusion"))
        .args(args)
        .env("VK_ICD_FILENAMES", "/nonexistent/no-driver.json")
        .env("VK_DRIVER_FILES", "/nonexistent/no-driver.json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("diffusion {args:?} still running after {deadline:?} without a driver");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn train_without_a_driver_ends_at_once_with_one_line_and_no_run_folder() {
    let dir = workdir("no-driver");
    let config = write_config(&dir, "tiny.toml", TINY);
    let out = dir.join("run");
    let start = Instant::now();
    let (code, _, err) = without_driver(
        &[
            "train",
            "--backend",
            "wgpu",
            "--config",
            s(&config),
            "--out",
            s(&out),
        ],
        Duration::from_secs(120),
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("error: the wgpu backend found no GPU adapter")
            && lines[0].contains("mesa-vulkan-drivers"),
        "{err}"
    );
    assert!(!out.exists(), "a run folder was left behind");
    eprintln!(
        "no driver: answered in {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn devices_says_there_is_no_adapter_and_what_to_install() {
    let (code, stdout, err) = without_driver(&["devices"], Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    assert!(stdout.contains("flex     compiled in"), "{stdout}");
    assert!(stdout.contains("wgpu     compiled in"), "{stdout}");
    assert!(
        stdout.contains("wgpu adapters: none") && stdout.contains("mesa-vulkan-drivers"),
        "{stdout}"
    );
    let dir = workdir("no-driver-device");
    let config = write_config(&dir, "tiny.toml", TINY);
    let out = dir.join("run");
    let args = [
        "train",
        "--config",
        s(&config),
        "--out",
        s(&out),
        "--backend",
        "flex",
    ];
    let (code, _, err) = without_driver(
        &[&args[..], &["--device", "0"]].concat(),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: --device picks a wgpu adapter"),
        "{err}"
    );
    assert!(!out.exists());
}
