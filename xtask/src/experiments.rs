//! `cargo xtask experiments [--suite presentation|quick]`: trains every run of every comparison
//! under `configs/experiments/`, evaluates each with the full-sum bound, draws the pictures, and
//! writes `reports/<suite>/report.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// What each comparison asks, by folder name (folders not listed are still run).
const QUESTIONS: [(&str, &str); 8] = [
    (
        "optimizers",
        "Which optimizer trains the presentation's Swiss-roll model best: Adam (1e-3), SGD \
         (1e-2), SGD with momentum 0.9 (1e-3, the same effective step as SGD), or the same with \
         the rate decaying by 0.9995 a step?",
    ),
    (
        "learning_rates",
        "Which Adam learning rate suits the Swiss-roll model?",
    ),
    ("schedules", "Linear or cosine beta schedule, at T = 100?"),
    (
        "loss",
        "The bound K against the noise-prediction MSE of Ho et al. (2020): `bound_paper` trains K \
         with the paper's parametrization, `bound_epsilon` trains K with the epsilon \
         parametrization and the fixed posterior variance, `mse_epsilon` trains the MSE with \
         that parametrization; `bound_epsilon_range` trains K with the variance learned inside \
         [b~_t, b_t], `hybrid_epsilon_range` trains the MSE plus 0.001 K (the bound's gradient \
         reaching only the variance). All are evaluated by K.",
    ),
    (
        "trajectory_length",
        "How long a trajectory: T = 40 (the paper's schedule), 100, 150 or 1000?",
    ),
    (
        "model_size",
        "How wide a network: 32, 128 or 256 units in each of the two hidden layers?",
    ),
    (
        "heartbeat_model",
        "The paper's proposed heartbeat network (sigmoid 50 x 3, one readout per step) against \
         the tweaked one (softplus 128 x 3, sinusoidal time features), same training budget.",
    ),
    (
        "heartbeat_learning_rates",
        "Which Adam learning rate suits the tweaked heartbeat network?",
    ),
];

/// One run's outcome.
struct Outcome {
    name: String,
    dir: PathBuf,
    eval: Option<Value>,
    summary: Option<Value>,
    error: Option<String>,
}

impl Outcome {
    fn num(&self, key: &str) -> Option<f64> {
        self.eval.as_ref()?.get(key)?.as_f64()
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:+.digits$}"))
}

fn table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "| run | K (bits) | ± s.e. | K − L_null | gap −H(data) − K | energy distance (floor) | valid | steps | wall time (s) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        if let Some(e) = &o.error {
            let _ = writeln!(t, "| `{}` | failed: {e} | | | | | | | |", o.name);
            continue;
        }
        let steps = o
            .summary
            .as_ref()
            .and_then(|s| s.get("steps")?.as_u64())
            .map_or("–".into(), |s| s.to_string());
        let wall = o
            .summary
            .as_ref()
            .and_then(|s| s.get("wall_time_s")?.as_f64())
            .map_or("–".into(), |w| format!("{w:.1}"));
        let valid = o
            .num("valid_fraction")
            .map_or("–".into(), |v| format!("{v:.3}"));
        let energy = match (o.num("energy_distance"), o.num("energy_distance_floor")) {
            (Some(e), Some(f)) => format!("{e:.4} ({f:.4})"),
            (Some(e), None) => format!("{e:.4}"),
            _ => "–".into(),
        };
        let _ = writeln!(
            t,
            "| `{}` | {} | {} | {} | {} | {energy} | {valid} | {steps} | {wall} |",
            o.name,
            fmt(o.num("k_bits"), 3),
            o.num("k_stderr_bits")
                .map_or("–".into(), |v| format!("{v:.3}")),
            fmt(o.num("k_minus_l_null_bits"), 3),
            o.num("gap_bits").map_or("–".into(), |v| format!("{v:.3}")),
        );
    }
    t
}

/// "Best: a, ... ahead of b by x bits (y s.e.)" for a table.
fn verdict(outcomes: &[Outcome]) -> String {
    let mut ranked: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.num("k_bits").is_some_and(f64::is_finite))
        .collect();
    ranked.sort_by(|a, b| b.num("k_bits").partial_cmp(&a.num("k_bits")).unwrap());
    match ranked.as_slice() {
        [] => "No run finished.".into(),
        [only] => format!("Only `{}` finished.", only.name),
        [best, next, ..] => {
            let (kb, kn) = (best.num("k_bits").unwrap(), next.num("k_bits").unwrap());
            let se = (best.num("k_stderr_bits").unwrap_or(0.0).powi(2)
                + next.num("k_stderr_bits").unwrap_or(0.0).powi(2))
            .sqrt();
            let worst = ranked.last().unwrap();
            let sigmas = if se > 0.0 {
                format!(" ({:.1} combined standard errors)", (kb - kn) / se)
            } else {
                String::new()
            };
            let mut s = format!(
                "Best: `{}`, K = {kb:+.3} bits, ahead of `{}` by {:.3} bits{sigmas}",
                best.name,
                next.name,
                kb - kn
            );
            if ranked.len() > 2 {
                let _ = write!(
                    s,
                    "; last: `{}`, {:.3} bits behind the best",
                    worst.name,
                    kb - worst.num("k_bits").unwrap()
                );
            }
            if let Some(v) = best.num("valid_fraction") {
                let _ = write!(s, "; the best run's samples are {:.1} % valid", 100.0 * v);
            }
            s.push('.');
            s
        }
    }
}

/// Trains and evaluates one config into `dir`, keeping its output in `log`; returns the run's
/// error line if it failed.
fn train(
    bin: &Path,
    root: &Path,
    config: &Path,
    dir: &Path,
    quick: bool,
    log: &Path,
) -> Result<Option<String>, String> {
    let mut cmd = Command::new(bin);
    cmd.current_dir(root)
        .arg("train")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(dir)
        .arg("--overwrite");
    if quick {
        cmd.args([
            "--steps",
            "200",
            "--batch-size",
            "128",
            "--eval-n",
            "100",
            "--eval-samples",
            "200",
        ]);
    }
    let result = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let mut text = String::from_utf8_lossy(&result.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&result.stderr));
    let _ = std::fs::write(log, &text);
    Ok((!result.status.success()).then(|| {
        text.lines()
            .rev()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("training failed")
            .to_string()
    }))
}

/// Runs the suite; returns an error line when the suite could not run at all.
pub fn run(root: &Path, suite: &str, only: &[String], report_only: bool) -> Result<(), String> {
    let quick = match suite {
        "quick" => true,
        "presentation" => false,
        other => {
            return Err(format!(
                "unknown suite `{other}`; use presentation or quick"
            ));
        }
    };
    let bin = crate::build_cli(root, &[])?;

    let configs = root.join("configs").join("experiments");
    let mut comparisons: Vec<PathBuf> = std::fs::read_dir(&configs)
        .map_err(|e| format!("cannot read {}: {e}", configs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| {
            only.is_empty()
                || only
                    .iter()
                    .any(|o| p.file_name().is_some_and(|n| n == o.as_str()))
        })
        .collect();
    // The presentation's order.
    let position = |p: &PathBuf| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        QUESTIONS
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or(QUESTIONS.len())
    };
    comparisons.sort_by_key(|p| (position(p), p.clone()));
    if comparisons.is_empty() {
        return Err("no comparison to run".into());
    }

    let out = root.join("reports").join(suite);
    std::fs::create_dir_all(out.join("logs"))
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let started = Instant::now();
    let mut report = format!(
        "# Experiments: the `{suite}` suite\n\n\
         Made by `cargo xtask experiments --suite {suite}` on {} ({} threads). Each comparison \
         trains the configs in `configs/experiments/<comparison>/` one after another{}, evaluates \
         each run with the full-sum bound K on held-out data (bits per point; per sequence for \
         the heartbeat), and draws the pictures beside the table. K − L_null is the gain over the \
         null model; the gap is −H(data) − K, the distance to the best possible bound. The run \
         folders are in `runs/`, each with its config, metrics, model and evaluation.\n\n",
        crate::cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if quick {
            ", cut to 200 steps at batch 128 with small evaluations (a smoke test of the \
             machinery: its numbers answer nothing)"
        } else {
            ""
        }
    );
    let mut failures = 0;
    let mut training_s = 0.0;
    for comparison in &comparisons {
        let cname = comparison
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut runs: Vec<PathBuf> = std::fs::read_dir(comparison)
            .map_err(|e| format!("cannot read {}: {e}", comparison.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        runs.sort();
        let mut outcomes = Vec::new();
        for config in &runs {
            let name = config.file_stem().unwrap().to_string_lossy().into_owned();
            let dir = out.join("runs").join(&cname).join(&name);
            let error = if report_only {
                (!dir.join("evaluation.json").is_file())
                    .then(|| "no finished run to report".to_string())
            } else {
                eprintln!(
                    "[{:>6.0} s] {cname}/{name}",
                    started.elapsed().as_secs_f64()
                );
                let log = out.join("logs").join(format!("{cname}-{name}.log"));
                train(&bin, root, config, &dir, quick, &log)?
            };
            failures += usize::from(error.is_some());
            outcomes.push(Outcome {
                eval: read_json(&dir.join("evaluation.json")),
                summary: read_json(&dir.join("summary.json")),
                name,
                dir,
                error,
            });
        }

        training_s += outcomes
            .iter()
            .filter_map(|o| o.summary.as_ref()?.get("wall_time_s")?.as_f64())
            .sum::<f64>();
        let pictures = out.join(&cname);
        let _ = std::fs::create_dir_all(&pictures);
        let finished: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
        let mut images = Vec::new();
        if !finished.is_empty() {
            let mut cmd = Command::new(&bin);
            cmd.current_dir(root)
                .args(["plot", "--what", "loss", "--out"]);
            cmd.arg(&pictures);
            for o in &finished {
                cmd.arg("--run").arg(&o.dir);
            }
            if cmd.status().is_ok_and(|s| s.success()) {
                images.push(("loss", "training loss of every run"));
            } else {
                failures += 1;
            }
            let best = finished
                .iter()
                .max_by(|a, b| {
                    a.num("k_bits")
                        .unwrap_or(f64::NEG_INFINITY)
                        .partial_cmp(&b.num("k_bits").unwrap_or(f64::NEG_INFINITY))
                        .unwrap()
                })
                .unwrap();
            let binary = best.num("valid_fraction").is_some();
            let (what, caption) = if binary {
                (
                    "samples",
                    "data and samples of the best run, aligned on the first pulse",
                )
            } else {
                ("trajectory", "q(x_t) and p(x_t) of the best run")
            };
            let mut cmd = Command::new(&bin);
            cmd.current_dir(root)
                .args(["plot", "--what", what, "--out"])
                .arg(&pictures)
                .arg("--run")
                .arg(&best.dir);
            if binary {
                cmd.arg("--align");
            }
            if cmd.status().is_ok_and(|s| s.success()) {
                images.push((what, caption));
            } else {
                failures += 1;
            }
        }

        let question = QUESTIONS
            .iter()
            .find(|(n, _)| *n == cname)
            .map_or("", |(_, q)| q);
        let _ = write!(
            report,
            "## {cname}\n\n{question}\n\n{}\n{}\n\n",
            table(&outcomes),
            verdict(&outcomes)
        );
        for (what, caption) in images {
            let _ = write!(report, "![{caption}]({cname}/{what}.png)\n\n");
        }
    }
    let _ = writeln!(
        report,
        "Training took {training_s:.0} s in all (the sum of the runs' wall times){}.",
        if report_only {
            "; this report was redrawn from the finished runs by `--report-only`".to_string()
        } else {
            format!(
                "; the whole suite, with evaluations and pictures, {:.0} s",
                started.elapsed().as_secs_f64()
            )
        }
    );
    let path = out.join("report.md");
    std::fs::write(&path, report).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("{}", path.display());
    if failures > 0 {
        return Err(format!(
            "{failures} run(s) or picture(s) failed; see {} and {}",
            path.display(),
            out.join("logs").display()
        ));
    }
    Ok(())
}
