//! `cargo xtask`: the project's developer commands, as plain processes (no burn dependency).
//!
//! - `cargo xtask train [--backend flex|ndarray|wgpu] [CLI args...]`: builds the `diffusion`
//!   binary in release mode with the backend's cargo feature and runs `diffusion train`.
//! - `cargo xtask test`: what CI runs: the whole test suite in release mode.
//! - `cargo xtask experiments [--suite presentation|quick] [--only NAME,...]`: the
//!   presentation's comparisons, trained, evaluated and written up in
//!   `reports/<suite>/report.md`.
//! - `cargo xtask bench [--backends flex,ndarray,wgpu] [--no-pytorch] [--quick]`: throughput
//!   and peak memory beside the PyTorch reference, into BENCHMARKS.md.

mod bench;
mod experiments;

use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Developer commands for the diffusion workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the CLI with one backend and run `diffusion train` with the remaining arguments.
    Train {
        /// flex (default), ndarray or wgpu.
        #[arg(long, default_value = "flex")]
        backend: String,
        /// Arguments passed to `diffusion train` (default: --config configs/swiss_roll.toml).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Train, evaluate and plot the presentation's comparisons (configs/experiments/) and write
    /// `reports/<suite>/report.md`.
    Experiments {
        /// `presentation` (the configs as written) or `quick` (200 steps each, a smoke test).
        #[arg(long, default_value = "presentation")]
        suite: String,
        /// Only these comparisons (folder names under configs/experiments), comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Redraw the pictures and rewrite the report from the finished runs, training nothing.
        #[arg(long)]
        report_only: bool,
    },
    /// Time training, sampling and evaluation on each backend and on the PyTorch reference, and
    /// write BENCHMARKS.md.
    Bench {
        /// Backends to time, comma-separated (each one not flex is built as a cargo feature).
        #[arg(long, value_delimiter = ',', default_value = "flex")]
        backends: Vec<String>,
        /// Skip the PyTorch reference.
        #[arg(long)]
        no_pytorch: bool,
        /// A tenth of the steps and points (a smoke test).
        #[arg(long)]
        quick: bool,
        /// Processes per cell; the table keeps the best.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Where to write the table.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
    },
    /// Run the test suite as CI does (release mode, all workspace crates).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The CPU's model name, from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The workspace's root: from `CARGO_MANIFEST_DIR` as `cargo xtask` sets it when it runs the
/// binary, else as it was at compile time. (Two clones sharing one cargo target dir share one
/// `xtask` binary, whose compile-time path may be the other clone's.)
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Builds the `diffusion` binary in release mode with the cargo `features` (none: flex only) and
/// returns its path.
fn build_cli(root: &std::path::Path, features: &[&str]) -> Result<std::path::PathBuf, String> {
    let what = std::iter::once("flex")
        .chain(features.iter().copied())
        .collect::<Vec<_>>()
        .join(", ");
    let first_time = if features.contains(&"wgpu") {
        "about 25 minutes"
    } else {
        "about 10 minutes"
    };
    eprintln!(
        "building the diffusion CLI (release, backends: {what}); the first build compiles Burn \
         and takes {first_time} on 2 cores, later ones seconds"
    );
    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "--release", "-p", "diffusion-cli"]);
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    if !build.status().is_ok_and(|s| s.success()) {
        return Err("building diffusion-cli failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    Ok(target.join("release").join("diffusion"))
}

/// Before the long wgpu build on Linux: is there any Vulkan driver (an ICD manifest) for it to
/// use? `diffusion` itself checks for real adapters when it starts; this only saves the user a
/// 25-minute build that cannot run. `DIFFUSION_SKIP_DRIVER_CHECK=1` skips it.
fn vulkan_driver_check() -> Result<(), String> {
    if !cfg!(target_os = "linux") || std::env::var_os("DIFFUSION_SKIP_DRIVER_CHECK").is_some() {
        return Ok(());
    }
    let missing = "the wgpu backend needs a Vulkan driver and none is installed (no ICD \
                   manifest in /usr/share/vulkan/icd.d or /etc/vulkan/icd.d): install your GPU \
                   vendor's driver, or `apt-get install mesa-vulkan-drivers` for a software one \
                   (slow); set DIFFUSION_SKIP_DRIVER_CHECK=1 to build anyway";
    for var in ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"] {
        if let Some(list) = std::env::var_os(var) {
            let found = std::env::split_paths(&list).any(|p| p.is_file());
            return if found {
                Ok(())
            } else {
                Err(format!("{var} names no existing file, so {missing}"))
            };
        }
    }
    let mut dirs: Vec<std::path::PathBuf> = ["/etc/vulkan/icd.d", "/usr/share/vulkan/icd.d"]
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    for var in ["XDG_DATA_DIRS", "XDG_CONFIG_DIRS"] {
        if let Some(list) = std::env::var_os(var) {
            dirs.extend(std::env::split_paths(&list).map(|p| p.join("vulkan/icd.d")));
        }
    }
    dirs.push("/usr/local/share/vulkan/icd.d".into());
    let any = dirs.iter().any(|d| {
        std::fs::read_dir(d).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json")))
        })
    });
    if any { Ok(()) } else { Err(missing.into()) }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(mut cmd: Command) -> ExitCode {
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot run {:?}: {e}", cmd.get_program());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Task::Train { backend, mut args } => {
            if !["flex", "ndarray", "wgpu"].contains(&backend.as_str()) {
                eprintln!("error: unknown backend `{backend}`; use flex, ndarray or wgpu");
                return ExitCode::FAILURE;
            }
            if !args
                .iter()
                .any(|a| a == "--config" || a.starts_with("--config="))
            {
                args.extend(["--config".into(), "configs/swiss_roll.toml".into()]);
            }
            if backend == "wgpu"
                && let Err(e) = vulkan_driver_check()
            {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            let root = &workspace_root();
            let features: Vec<&str> = if backend == "flex" {
                vec![]
            } else {
                vec![backend.as_str()]
            };
            let bin = match build_cli(root, &features) {
                Ok(bin) => bin,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut cmd = Command::new(bin);
            cmd.args(["train", "--backend", &backend]).args(&args);
            status(cmd)
        }
        Task::Experiments {
            suite,
            only,
            report_only,
        } => {
            let root = &workspace_root();
            match experiments::run(root, &suite, &only, report_only) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Task::Bench {
            backends,
            no_pytorch,
            quick,
            repeat,
            out,
        } => {
            let root = &workspace_root();
            let out = if out.is_absolute() {
                out
            } else {
                root.join(out)
            };
            match bench::run(root, &backends, !no_pytorch, quick, repeat, &out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Task::Test { args } => {
            let mut cmd = cargo();
            cmd.args(["test", "--release", "--workspace", "--no-fail-fast"])
                .args(&args);
            status(cmd)
        }
    }
}
