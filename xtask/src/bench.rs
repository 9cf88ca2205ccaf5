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
    /// Training: the multiply-adds of one example's forward and backward pass, times two.
    flop_per_example: Option<f64>,
}

/// Forward and backward flop of one example through affine layers `[k, h]`: x W forward, the
/// weights' gradient, and the input's gradient for every layer but the first.
fn layer_flop(layers: &[(usize, usize)]) -> f64 {
    let mac: usize = layers.iter().map(|(k, h)| k * h).sum();
    let first = layers.first().map_or(0, |(k, h)| k * h);
    2.0 * (3 * mac - first) as f64
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A training workload: `config` on our side, `model` in the PyTorch script.
fn train_workload(
    label: &str,
    config: &str,
    model: &str,
    layers: Option<&[(usize, usize)]>,
    batch: usize,
    steps: usize,
) -> Workload {
    let (batch, steps) = (batch.to_string(), steps.to_string());
    let common = ["--batch-size", batch.as_str(), "--steps", steps.as_str()];
    Workload {
        label: label.to_string(),
        size: format!("batch {batch}"),
        metric: "examples_per_s",
        unit: "examples/s",
        ours: strings(&[&["--workload", "train", "--config", config][..], &common].concat()),
        torch: strings(&[&["--workload", "train", "--model", model][..], &common].concat()),
        flop_per_example: layers.map(layer_flop),
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
            Some(&[(2, 128), (128, 128), (128, 4)]),
            batch,
            scale(steps),
        ));
    }
    v.push(train_workload(
        "train heartbeat paper model (T = 2000)",
        beat,
        "heartbeat",
        Some(&[(20, 50), (50, 50), (50, 50), (50, 20)]),
        256,
        scale(200),
    ));
    v.push(train_workload(
        "train MNIST U-Net (configs/mnist.toml, 28x28, T = 1000)",
        "configs/mnist.toml",
        "mnist",
        None,
        64,
        scale(40),
    ));
    v.push(train_workload(
        "train MNIST paper network (configs/mnist_paper.toml, 28x28, T = 1000)",
        "configs/mnist_paper.toml",
        "mnist_paper",
        None,
        128,
        scale(40),
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
                flop_per_example: None,
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
(VmHWM / ru_maxrss). The ratio is flex / the faster of PyTorch eager and `torch.compile`: \
above 1, flex is faster. A wgpu column names \
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
        v.push("AVX-512 (the fused layers and gemm's products use it)");
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

/// One table row: the metric of each column, flex / the faster PyTorch column, flex's achieved
/// GFLOP/s (training) against the matrix-product `ceiling`, peak memory.
fn table_row(
    w: &Workload,
    values: &[Result<Value, String>],
    columns: &[String],
    ceiling: Option<f64>,
) -> String {
    let metric = |v: &Result<Value, String>| v.as_ref().ok()?.get(w.metric)?.as_f64();
    let mut row = format!("| {} | {} | {} |", w.label, w.size, w.unit);
    for v in values {
        match (v, metric(v)) {
            (_, Some(m)) => {
                let _ = write!(row, " {m:.0} |");
            }
            (Err(e), _) if e != SKIPPED => {
                let _ = write!(row, " failed: {e} |");
            }
            _ => row.push_str(" – |"),
        }
    }
    let flex = columns
        .iter()
        .position(|c| c == "flex")
        .and_then(|i| metric(&values[i]));
    let peer = columns
        .iter()
        .zip(values)
        .filter(|(c, _)| c.starts_with("pytorch"))
        .filter_map(|(_, v)| metric(v))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    if columns.iter().any(|c| c.starts_with("pytorch")) {
        match (flex, peer) {
            (Some(a), Some(b)) if b > 0.0 => {
                let _ = write!(row, " {:.2}x |", a / b);
            }
            _ => row.push_str(" – |"),
        }
    }
    if let Some(ceiling) = ceiling {
        match (flex, w.flop_per_example) {
            (Some(rate), Some(flop)) => {
                let g = rate * flop / 1e9;
                let _ = write!(row, " {g:.0} ({:.0} %) |", 100.0 * g / ceiling);
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

/// The cell of a column that does not run a workload (torch.compile outside training).
const SKIPPED: &str = "skipped";

/// Runs `cmd`; its JSON line.
fn run_json(cmd: &mut Command) -> Result<Result<Value, String>, String> {
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    Ok(json_line(&output))
}

/// The best value of each of `keys` over `repeat` runs of `cmd`.
fn best_of<const K: usize>(
    cmd: &mut Command,
    repeat: usize,
    keys: [&str; K],
) -> Result<[Option<f64>; K], String> {
    let mut best = [None; K];
    for _ in 0..repeat.max(1) {
        if let Ok(v) = run_json(cmd)? {
            for (b, key) in best.iter_mut().zip(keys) {
                if let Some(x) = v.get(key).and_then(Value::as_f64) {
                    *b = Some(b.map_or(x, |b: f64| b.max(x)));
                }
            }
        }
    }
    Ok(best)
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
        columns.push("pytorch compile".into());
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
    let torch_cmd = |args: &[String]| {
        let mut cmd = Command::new(py.as_ref().expect("a python"));
        cmd.current_dir(root)
            .arg("bench/pytorch/bench.py")
            .args(args)
            .args(["--threads", &threads.to_string()]);
        cmd
    };
    // The matrix-product ceiling: flex's product (the one the networks use) and PyTorch's BLAS.
    let mut ceiling_line = String::new();
    let mut ceiling: Option<f64> = None;
    if backends.iter().any(|b| b == "flex") {
        eprintln!("matrix-product ceiling");
        let mut flex = Command::new(&bin);
        flex.current_dir(root)
            .args(["bench", "--workload", "matmul", "--backend", "flex"]);
        // each run times both products; the best of each over the runs
        let keys = ["square_gflops", "layer_gflops"];
        let [sq, layer] = best_of(&mut flex, repeat, keys)?;
        let mut rates = vec![("flex", sq, layer)];
        if py.is_some() {
            let args = strings(&["--workload", "matmul"]);
            let [sq, layer] = best_of(&mut torch_cmd(&args), repeat, keys)?;
            rates.push(("PyTorch", sq, layer));
        }
        let shown = |v: Option<f64>| v.map_or("–".to_string(), |g| format!("{g:.0}"));
        let parts: Vec<String> = rates
            .iter()
            .map(|(who, sq, layer)| {
                format!(
                    "{who} {} GFLOP/s (2048³), {} ([4096 × 128] · [128 × 128])",
                    shown(*sq),
                    shown(*layer)
                )
            })
            .collect();
        ceiling = rates.iter().filter_map(|r| r.1).reduce(f64::max);
        ceiling_line = format!(
            "Matrix-product ceiling, f32 on {threads} threads (`diffusion bench --workload \
             matmul`, `bench/pytorch/bench.py --workload matmul`): {}. The GFLOP/s column is \
             flex's training rate times the forward and backward flop of one example through \
             the affine layers, against the faster 2048³ rate.\n\n",
            parts.join("; ")
        );
    }
    let mut section = format!(
        "## {cpu}\n\n`{command}`, {threads} threads ({pools}), best of {repeat} process(es) per \
         cell; vector extensions: {}.\n\n{ceiling_line}",
        vector_extensions()
    );
    let mut rows = Vec::new();
    // What each column ran on, from the first answer that says (wgpu: the adapter).
    let mut devices: Vec<Option<String>> = vec![None; columns.len()];
    let mut torch_version: Option<String> = None;
    let mut kernels: Option<String> = None;
    for w in workloads(quick) {
        eprintln!("{} ({})", w.label, w.size);
        // Each cell: the best of `repeat` processes, run alternately across the columns.
        let mut commands: Vec<Option<Command>> = Vec::new();
        for b in backends {
            let mut cmd = Command::new(&bin);
            cmd.current_dir(root)
                .arg("bench")
                .args(&w.ours)
                .args(["--backend", b]);
            commands.push(Some(cmd));
        }
        if py.is_some() {
            commands.push(Some(torch_cmd(&w.torch)));
            commands.push(w.flop_per_example.map(|_| {
                let mut cmd = torch_cmd(&w.torch);
                cmd.arg("--compile");
                cmd
            }));
        }
        let mut values: Vec<Result<Value, String>> = commands
            .iter()
            .map(|c| Err(if c.is_some() { "not run" } else { SKIPPED }.into()))
            .collect();
        for _ in 0..repeat.max(1) {
            for (cmd, best) in commands.iter_mut().zip(values.iter_mut()) {
                let Some(cmd) = cmd else { continue };
                let value = run_json(cmd)?;
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
        if let Some(Ok(v)) = values.first()
            && let Some(k) = v.get("kernels").and_then(Value::as_str)
        {
            kernels = Some(k.to_string());
        }
        if py.is_some()
            && let Some(Ok(v)) = values.get(backends.len())
            && let Some(b) = v.get("backend").and_then(Value::as_str)
        {
            torch_version = Some(b.trim_start_matches("pytorch ").to_string());
        }
        let row = table_row(&w, &values, &columns, ceiling);
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
    if py.is_some() {
        header.push_str(" flex / faster pytorch |");
        rule.push_str("---|");
    }
    if ceiling.is_some() {
        header.push_str(" flex GFLOP/s (of ceiling) |");
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
        let _ = writeln!(
            section,
            "\nPyTorch {v}; `pytorch compile` is the loss under `torch.compile` (inductor, CPU)."
        );
    }
    if let Some(k) = kernels {
        let _ = writeln!(
            section,
            "\nThe fused layers (diffusion-kernels) ran their `{k}` kernels, picked at run time."
        );
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
