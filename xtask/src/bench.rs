//! `cargo xtask bench`: times training, sampling and evaluation on every requested backend and
//! on the PyTorch reference (`bench/pytorch/`, same models, losses, sizes and thread count), each
//! workload in its own process, and writes BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// One workload: the `diffusion bench` arguments and the PyTorch script's.
struct Workload {
    label: String,
    size: String,
    metric: &'static str,
    unit: &'static str,
    ours: Vec<String>,
    torch: Vec<String>,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A training workload: `config` on our side, `model` in the PyTorch script.
fn train_workload(label: &str, config: &str, model: &str, batch: usize, steps: usize) -> Workload {
    let (batch, steps) = (batch.to_string(), steps.to_string());
    let common = ["--batch-size", batch.as_str(), "--steps", steps.as_str()];
    Workload {
        label: label.to_string(),
        size: format!("batch {batch}"),
        metric: "examples_per_s",
        unit: "examples/s",
        ours: strings(&[&["--workload", "train", "--config", config][..], &common].concat()),
        torch: strings(&[&["--workload", "train", "--model", model][..], &common].concat()),
    }
}

fn workloads(quick: bool) -> Vec<Workload> {
    let roll = "configs/swiss_roll_presentation.toml";
    let beat = "configs/heartbeat_paper_model.toml";
    let scale = |n: usize| if quick { (n / 10).max(5) } else { n };
    let mut v = Vec::new();
    for (batch, steps) in [(128, 1000), (1024, 200), (4096, 60)] {
        v.push(train_workload(
            "train Swiss roll (2-128-128-4, T = 100)",
            roll,
            "roll",
            batch,
            scale(steps),
        ));
    }
    v.push(train_workload(
        "train heartbeat paper model (T = 2000)",
        beat,
        "heartbeat",
        256,
        scale(200),
    ));
    for (what, metric, unit) in [
        ("sample", "point_steps_per_s", "points x steps/s"),
        ("evaluate", "rows_per_s", "(point, t) rows/s"),
    ] {
        for (model, config, n, name) in [
            ("roll", roll, 10_000, "Swiss roll (T = 100)"),
            ("heartbeat", beat, 500, "heartbeat (T = 2000)"),
        ] {
            let n = scale(n).to_string();
            v.push(Workload {
                label: format!("{what} {name}"),
                size: format!("n = {n}"),
                metric,
                unit,
                ours: strings(&["--workload", what, "--config", config, "--n", &n]),
                torch: strings(&["--workload", what, "--model", model, "--n", &n]),
            });
        }
    }
    v
}

fn json_line(output: &std::process::Output) -> Result<Value, String> {
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| "no JSON line".into())
}

/// A Python with the pinned PyTorch, installing it into a cached virtual environment if needed.
fn python(root: &Path) -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let venv = home.join(".cache").join("diffusion-bench-venv");
    let py = venv.join("bin").join("python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", "import torch, numpy"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.exists() && ok(&py) {
        return Ok(py);
    }
    eprintln!("installing the PyTorch reference into {}", venv.display());
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !made.success() {
        return Err("python3 -m venv failed".into());
    }
    let installed = Command::new(venv.join("bin").join("pip"))
        .args(["install", "-q", "-r"])
        .arg(root.join("bench/pytorch/requirements.txt"))
        .status()
        .map_err(|e| format!("cannot run pip: {e}"))?;
    if !installed.success() || !ok(&py) {
        return Err("pip install -r bench/pytorch/requirements.txt failed".into());
    }
    Ok(py)
}

/// The intro of BENCHMARKS.md; one `## <CPU model>` section per machine follows it.
const INTRO: &str = "# Benchmarks\n\nOne table per CPU model, each made by `cargo xtask bench` \
on that machine (the command is under its heading), and apart from it one per other set of \
backends measured there; a new run replaces its own section and keeps the others. Each cell is the best of several processes, the columns run in turn: \
training times 10 untimed steps, then the timed ones (data, noising, forward, backward, Adam, \
and reading the loss every step, in both); sampling runs the whole reverse chain; evaluation the \
full sum over t in chunks of 16,384 rows. Peak memory is the process's peak resident set \
(VmHWM / ru_maxrss). The ratio is flex / PyTorch: above 1, flex is faster. A wgpu column names \
the adapter it ran on; a CPU (software driver) adapter is Mesa's lavapipe emulating a GPU on \
the CPU, there to show the backend works, not how fast a GPU is.\n";

/// `old` (BENCHMARKS.md) with the section headed `## {cpu}` replaced by `section` (or added),
/// every other CPU's section kept as it was.
fn merge_section(old: &str, cpu: &str, section: &str) -> String {
    let mut sections: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in old.lines() {
        if line.starts_with("## ") {
            if let Some(s) = current.take() {
                sections.push(s);
            }
            current = Some(String::new());
        }
        if let Some(s) = current.as_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    if let Some(s) = current {
        sections.push(s);
    }
    let heading = format!("## {cpu}\n");
    let mut replaced = false;
    for s in sections.iter_mut() {
        if s.starts_with(&heading) {
            *s = section.to_string();
            replaced = true;
        }
    }
    if !replaced {
        sections.push(section.to_string());
    }
    let mut md = String::from(INTRO);
    for s in sections {
        md.push('\n');
        md.push_str(s.trim_end());
        md.push('\n');
    }
    md
}

/// The vector extensions of this CPU that the kernels can use, from /proc/cpuinfo.
fn vector_extensions() -> String {
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let mut v: Vec<&str> = Vec::new();
    if has("avx512f") {
        v.push("AVX-512 (flex's element-wise kernels use it)");
    }
    if has("avx2") && has("fma") {
        v.push("AVX2 + FMA");
    }
    if has("amx_tile") {
        v.push("AMX");
    }
    if v.is_empty() {
        "none beyond SSE".into()
    } else {
        v.join(", ")
    }
}

/// One table row: the metric of each column, the flex / PyTorch ratio, peak memory.
fn table_row(
    w: &Workload,
    values: &[Result<Value, String>],
    backends: &[String],
    pytorch: bool,
) -> String {
    let metric = |v: &Result<Value, String>| v.as_ref().ok()?.get(w.metric)?.as_f64();
    let mut row = format!("| {} | {} | {} |", w.label, w.size, w.unit);
    for v in values {
        match (v, metric(v)) {
            (_, Some(m)) => {
                let _ = write!(row, " {m:.0} |");
            }
            (Err(e), _) => {
                let _ = write!(row, " failed: {e} |");
            }
            _ => row.push_str(" – |"),
        }
    }
    if pytorch && let Some(i) = backends.iter().position(|b| b == "flex") {
        match (metric(&values[i]), metric(values.last().expect("a column"))) {
            (Some(a), Some(b)) if b > 0.0 => {
                let _ = write!(row, " {:.2}x |", a / b);
            }
            _ => row.push_str(" – |"),
        }
    }
    for v in values {
        match v
            .as_ref()
            .ok()
            .and_then(|v| v.get("peak_rss_mib")?.as_f64())
        {
            Some(m) => {
                let _ = write!(row, " {m:.0} |");
            }
            None => row.push_str(" – |"),
        }
    }
    row
}

/// Runs the benchmark; writes `out` (BENCHMARKS.md by default).
pub fn run(
    root: &Path,
    backends: &[String],
    pytorch: bool,
    quick: bool,
    repeat: usize,
    out: &Path,
) -> Result<(), String> {
    let features: Vec<&str> = backends
        .iter()
        .map(String::as_str)
        .filter(|b| *b != "flex")
        .collect();
    if let Some(b) = features.iter().find(|b| !["ndarray", "wgpu"].contains(b)) {
        return Err(format!("unknown backend `{b}`; use flex, ndarray or wgpu"));
    }
    let bin = crate::build_cli(root, &features)?;
    let py = if pytorch { Some(python(root)?) } else { None };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut columns: Vec<String> = backends.to_vec();
    if py.is_some() {
        columns.push("pytorch".into());
    }
    // One section per CPU, and apart from it one per other set of backends (or --quick run),
    // so a run of the GPU or the deprecated backends leaves the CPU's main table in place.
    let mut cpu = crate::cpu_model();
    if backends != ["flex"] {
        let _ = write!(cpu, ": {}", backends.join(", "));
    }
    if quick {
        cpu.push_str(" (--quick)");
    }
    let mut command = format!("cargo xtask bench --backends {}", backends.join(","));
    if py.is_none() {
        command.push_str(" --no-pytorch");
    }
    if quick {
        command.push_str(" --quick");
    }
    if repeat != 3 {
        let _ = write!(command, " --repeat {repeat}");
    }
    let pools = if py.is_some() {
        format!("Burn's rayon pool and `torch.set_num_threads({threads})`")
    } else {
        "Burn's rayon pool".to_string()
    };
    let mut section = format!(
        "## {cpu}\n\n`{command}`, {threads} threads ({pools}), best of {repeat} process(es) per \
         cell; vector extensions: {}.\n\n",
        vector_extensions()
    );
    let mut rows = Vec::new();
    // What each column ran on, from the first answer that says (wgpu: the adapter).
    let mut devices: Vec<Option<String>> = vec![None; columns.len()];
    let mut torch_version: Option<String> = None;
    for w in workloads(quick) {
        eprintln!("{} ({})", w.label, w.size);
        // Each cell: the best of `repeat` processes, run alternately across the columns.
        let mut commands: Vec<Command> = Vec::new();
        for b in backends {
            let mut cmd = Command::new(&bin);
            cmd.current_dir(root)
                .arg("bench")
                .args(&w.ours)
                .args(["--backend", b]);
            commands.push(cmd);
        }
        if let Some(py) = &py {
            let mut cmd = Command::new(py);
            cmd.current_dir(root)
                .arg("bench/pytorch/bench.py")
                .args(&w.torch)
                .args(["--threads", &threads.to_string()]);
            commands.push(cmd);
        }
        let mut values: Vec<Result<Value, String>> = vec![Err("not run".into()); commands.len()];
        for _ in 0..repeat.max(1) {
            for (cmd, best) in commands.iter_mut().zip(values.iter_mut()) {
                let output = cmd
                    .output()
                    .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
                let value = json_line(&output);
                let score = |v: &Result<Value, String>| {
                    v.as_ref().ok().and_then(|v| v.get(w.metric)?.as_f64())
                };
                if score(&value) > score(best) || (best.is_err() && value.is_err()) {
                    *best = value;
                }
            }
        }
        for (label, v) in devices.iter_mut().zip(&values) {
            if label.is_none()
                && let Ok(v) = v
                && let Some(d) = v.get("device").and_then(Value::as_str)
            {
                *label = Some(d.to_string());
            }
        }
        if py.is_some()
            && let Some(Ok(v)) = values.last()
            && let Some(b) = v.get("backend").and_then(Value::as_str)
        {
            torch_version = Some(b.trim_start_matches("pytorch ").to_string());
        }
        let row = table_row(&w, &values, backends, py.is_some());
        eprintln!("  {row}");
        rows.push(row);
    }
    let mut header = String::from("| workload | size | unit |");
    let mut rule = String::from("|---|---|---|");
    for (c, device) in columns.iter().zip(&devices) {
        match device {
            Some(d) if c == "wgpu" => {
                let _ = write!(header, " wgpu on {d} |");
            }
            _ => {
                let _ = write!(header, " {c} |");
            }
        }
        rule.push_str("---|");
    }
    if py.is_some() && backends.iter().any(|b| b == "flex") {
        header.push_str(" flex / pytorch |");
        rule.push_str("---|");
    }
    for c in &columns {
        let _ = write!(header, " peak MiB {c} |");
        rule.push_str("---|");
    }
    let _ = writeln!(section, "{header}\n{rule}");
    for row in rows {
        let _ = writeln!(section, "{row}");
    }
    if let Some(v) = torch_version {
        let _ = writeln!(section, "\nPyTorch {v}.");
    }
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let md = merge_section(&old, &cpu, &section);
    std::fs::write(out, md).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_run_replaces_its_own_cpus_table_and_keeps_the_others() {
        let old = format!("{INTRO}\n## CPU A\n\ntable a\n\n## CPU B\n\ntable b\n");
        let md = merge_section(&old, "CPU A", "## CPU A\n\nnew a\n");
        assert_eq!(
            md,
            format!("{INTRO}\n## CPU A\n\nnew a\n\n## CPU B\n\ntable b\n")
        );
        let md = merge_section(&md, "CPU C", "## CPU C\n\nc\n");
        assert!(
            md.ends_with("## CPU B\n\ntable b\n\n## CPU C\n\nc\n"),
            "{md}"
        );
        assert_eq!(
            merge_section("", "X", "## X\n\nx\n"),
            format!("{INTRO}\n## X\n\nx\n")
        );
    }
}
