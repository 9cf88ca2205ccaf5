//! `diffusion train`: a new run from a config, or a stopped one continued (`--resume`), then the
//! evaluation of its bound.

use std::io::IsTerminal;
use std::path::Path;

use burn::tensor::Device;
use clap::ValueEnum;
use diffusion_models::config::{DataConfig, LossKind};
use diffusion_models::{Progress, Run, RunDir, RunError, evaluate};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{BackendArg, TrainArgs};
use crate::backend::Backend;
use crate::common::{check_at_least_one, default_eval_points, read_config};
use crate::evaluate::print_evaluation;

/// Runs `diffusion train`.
pub fn cmd_train(a: TrainArgs) -> Result<(), String> {
    let (run, backend, device) = match &a.resume {
        Some(dir) => resume_run(dir, &a.backend)?,
        None => new_run(&a)?,
    };
    let eval_n = a
        .eval_n
        .unwrap_or_else(|| default_eval_points(run.manifest.config.diffusion.steps));
    check_at_least_one("--eval-n", eval_n)?;
    let t = &run.manifest.config.train;
    match &run.resume {
        Some(ck) => eprintln!(
            "resuming {} at step {} of {} on {}",
            run.dir.path().display(),
            ck.state.step,
            t.steps,
            backend.name()
        ),
        None => eprintln!(
            "training {} steps at batch {} on {} (T = {}, {:?} parametrization) into {}",
            t.steps,
            t.batch_size,
            backend.name(),
            run.manifest.config.diffusion.steps,
            run.manifest.config.diffusion.parametrization,
            run.dir.path().display()
        ),
    }
    let mut reporter = Reporter::new(
        t.steps,
        run.resume.as_ref().map_or(0, |c| c.state.step),
        t.loss,
    );
    let (dir, manifest) = (run.dir.clone(), run.manifest.clone());
    let (model, summary) = run
        .train(&device, &mut |p| reporter.report(p))
        .map_err(|e| e.to_string())?;
    reporter.finish();
    eprintln!(
        "trained {} steps in {:.1} s ({:.1} steps/s)",
        summary.steps, summary.wall_time_s, summary.steps_per_s
    );
    if manifest.config.train.ema_decay.is_some() {
        eprintln!("evaluating the moving average of the weights (model_ema.bpk)");
    }
    let samples = a
        .eval_samples
        .unwrap_or(if manifest.image.is_some() { 0 } else { 2_000 });
    let eval = evaluate(&manifest, &dir, &model, &device, eval_n, samples, 0)
        .map_err(|e| e.to_string())?;
    dir.write_json("evaluation.json", &eval)
        .map_err(|e| e.to_string())?;
    print_evaluation(&eval);
    println!("run folder: {}", dir.path().display());
    Ok(())
}

/// Opens a run folder to continue it from its newest checkpoint, on the backend it was trained
/// on unless `--backend` says otherwise.
fn resume_run(dir: &Path, backend: &BackendArg) -> Result<(Run, Backend, Device), String> {
    let run = Run::resume(dir).map_err(|e| e.to_string())?;
    let name = &run.manifest.backend;
    let chosen = match backend.backend {
        Some(b) => b,
        None => Backend::from_str(name, true)
            .map_err(|_| format!("{}: unknown backend {name:?}", dir.display()))?,
    };
    let device = chosen.device(backend.device)?;
    Ok((run, chosen, device))
}

/// Reads the config and data of a new run (command-line overrides applied), then creates its
/// folder.
fn new_run(a: &TrainArgs) -> Result<(Run, Backend, Device), String> {
    let config_path = a.config.as_deref().expect("clap requires --config");
    let mut config = read_config(config_path)?;
    let t = &mut config.train;
    t.steps = a.steps.unwrap_or(t.steps);
    t.batch_size = a.batch_size.unwrap_or(t.batch_size);
    t.seed = a.seed.unwrap_or(t.seed);
    t.checkpoint_every = a.checkpoint_every.unwrap_or(t.checkpoint_every);
    if let Some(path) = &a.data {
        // a file config keeps its own options; a generator config takes the defaults
        config.data = match config.data {
            DataConfig::File {
                heldout_fraction,
                standardize,
                dequantize,
                logit_alpha,
                binarize,
                ..
            } => DataConfig::File {
                path: path.clone(),
                heldout_fraction,
                // a test file belongs to the data it was given with
                test_path: a.test_data.clone(),
                standardize,
                dequantize,
                logit_alpha,
                binarize,
            },
            _ => DataConfig::File {
                path: path.clone(),
                heldout_fraction: 0.1,
                test_path: a.test_data.clone(),
                standardize: None,
                dequantize: false,
                logit_alpha: None,
                binarize: None,
            },
        };
    } else if let Some(test) = &a.test_data {
        match &mut config.data {
            DataConfig::File { test_path, .. } => *test_path = Some(test.clone()),
            _ => {
                return Err(
                    "--test-data needs file data (a config with a data file, or --data)".into(),
                );
            }
        }
    }
    config
        .validate()
        .map_err(|e| format!("config {}: {e}", config_path.display()))?;
    let (backend, device) = a.backend.resolve()?;
    let resolved = diffusion_models::resolve(config).map_err(|e| e.to_string())?;
    for w in &resolved.warnings {
        eprintln!("warning: {w}");
    }
    let out = match &a.out {
        Some(p) => p.clone(),
        None => {
            let stem = config_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            RunDir::fresh_path(&Path::new("runs").join(stem))
        }
    };
    let run = Run::create(resolved, &out, a.overwrite, backend.name()).map_err(|e| match e {
        RunError::Exists(_) => {
            format!("{e}; pass --overwrite to replace it, or choose another --out")
        }
        e => e.to_string(),
    })?;
    Ok((run, backend, device))
}

/// A progress bar on a terminal, plain lines otherwise.
struct Reporter {
    bar: Option<ProgressBar>,
    /// " bits" for the bound; nothing for the noise MSE and the hybrid loss.
    unit: &'static str,
}

impl Reporter {
    fn new(total: usize, done: usize, loss: LossKind) -> Self {
        let unit = if loss == LossKind::Bound { " bits" } else { "" };
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_position(done as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
                )
                .expect("valid template"),
            );
            bar
        });
        Self { bar, unit }
    }

    fn report(&mut self, p: &Progress) {
        let rate = p.step as f64 / p.elapsed_s.max(1e-9);
        let msg = format!(
            "loss {:+.4}{}  lr {:.2e}  {rate:.1} steps/s",
            p.loss_bits, self.unit, p.lr
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(p.step as u64);
                bar.set_message(msg);
            }
            None => eprintln!("step {}/{}  {msg}", p.step, p.total),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
