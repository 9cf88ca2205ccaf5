//! The subcommands. Each returns `Err(one line)` on bad input; `main` prints it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use diffusion_data::{Array2, Heartbeat, SwissRoll, io};
use diffusion_models::checkpoint;
use diffusion_models::config::{LossKind, ProcessKind};
use diffusion_models::evaluate::Evaluation;
use diffusion_models::training::streams;
use diffusion_models::{
    Checkpoint, DataConfig, Progress, RunConfig, RunDir, RunManifest, TrainingData, evaluate, train,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;

use crate::backend::Backend;

/// Diffusion probabilistic models (Sohl-Dickstein et al. 2015): train, evaluate, sample.
#[derive(Debug, Parser)]
#[command(name = "diffusion", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model from a config file, then evaluate its bound on held-out data.
    Train(TrainArgs),
    /// The bound K in bits on a run's held-out data, with L_null and -H(data).
    Evaluate(EvaluateArgs),
    /// Draw samples from a trained run.
    Sample(SampleArgs),
    /// Draw a run's pictures (PNG and SVG): trajectories, drift, loss curves, rasters.
    Plot(crate::plot::PlotArgs),
    /// How noisy the training gradient is with uniform and with importance-sampled steps t.
    GradientVariance(GradientVarianceArgs),
    /// Time one workload (training, sampling or evaluation) and print a JSON line.
    Bench(crate::bench::BenchArgs),
    /// Generate a data set.
    #[command(subcommand)]
    Data(DataCommand),
    /// The backends compiled into this binary and the GPU adapters wgpu finds.
    Devices,
}

#[derive(Debug, Args)]
pub struct BackendArg {
    /// Compute backend (must be compiled in: cargo features flex, ndarray, wgpu).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// The wgpu adapter to use, by its number in `diffusion devices` (default: the best one).
    #[arg(long, value_name = "N")]
    device: Option<usize>,
}

impl BackendArg {
    /// The `--device` given, if any.
    pub fn adapter(&self) -> Option<usize> {
        self.device
    }

    pub fn resolve(&self) -> Result<(Backend, burn::tensor::Device), String> {
        let b = match self.backend {
            Some(b) => b,
            None => Backend::default_compiled()?,
        };
        Ok((b, b.device(self.device)?))
    }
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// The run configuration (TOML), e.g. configs/swiss_roll.toml.
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Continue the run in this folder from its newest checkpoint (its config.json, data and
    /// seed; the result is the same as a run that was never interrupted).
    #[arg(long, conflicts_with_all = [
        "config", "out", "overwrite", "steps", "batch_size", "seed", "data", "checkpoint_every"
    ])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArg,
    /// Run folder [default: runs/CONFIG_NAME, or runs/CONFIG_NAME-2, ... if taken].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the files of an existing run folder given by --out.
    #[arg(long)]
    overwrite: bool,
    /// Override train.steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Override train.batch_size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Override train.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override train.checkpoint_every (0: only a checkpoint at the end).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Train on the points in this .csv or .npy file instead of the config's data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out points for the evaluation printed at the end [default: 10,000, fewer for long
    /// trajectories: 2,000,000 / (T - 1), at least 1,000].
    #[arg(long)]
    eval_n: Option<usize>,
    /// Samples drawn by that evaluation for the valid share (heartbeat data).
    #[arg(long, default_value_t = 2_000)]
    eval_samples: usize,
}

#[derive(Debug, Args)]
struct EvaluateArgs {
    /// The run folder.
    #[arg(long)]
    run: PathBuf,
    /// Held-out points to average over [default: 10,000, fewer for long trajectories:
    /// 2,000,000 / (T - 1), at least 1,000].
    #[arg(long)]
    n: Option<usize>,
    /// Seed of the x_t draws (and of the samples).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples to draw for the valid share and phases (heartbeat data; 0 skips them).
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArg,
}

#[derive(Debug, Args)]
struct GradientVarianceArgs {
    /// The run folder.
    #[arg(long)]
    run: PathBuf,
    /// Independent batches per estimator (at least 2).
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// Examples per batch [default: the run's train.batch_size].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Seed of the batches, steps and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArg,
}

#[derive(Debug, Args)]
struct SampleArgs {
    /// The run folder.
    #[arg(long)]
    run: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long = "n")]
    n: usize,
    /// Output file (.csv or .npy).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the reverse chain.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    backend: BackendArg,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// The 2-D Swiss roll, normalised to unit mean per-coordinate variance.
    SwissRoll {
        /// Number of points.
        #[arg(short = 'n', long = "n")]
        n: usize,
        /// Output file (.csv or .npy).
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Noise standard deviation in the spiral's raw units.
        #[arg(long, default_value_t = 0.5)]
        noise: f64,
    },
    /// Binary heartbeat sequences: a 1 every `period`-th bin, uniform phase.
    Heartbeat {
        /// Number of sequences.
        #[arg(short = 'n', long = "n")]
        n: usize,
        /// Output file (.csv or .npy).
        #[arg(long)]
        out: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Bits per sequence.
        #[arg(long, default_value_t = 20)]
        length: usize,
        /// Bins between pulses.
        #[arg(long, default_value_t = 5)]
        period: usize,
    },
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Evaluate(a) => cmd_evaluate(a),
        Command::Sample(a) => cmd_sample(a),
        Command::Plot(a) => crate::plot::cmd_plot(a),
        Command::Bench(a) => crate::bench::cmd_bench(a),
        Command::GradientVariance(a) => cmd_gradient_variance(a),
        Command::Devices => crate::backend::list_devices(),
        Command::Data(DataCommand::SwissRoll {
            n,
            out,
            seed,
            noise,
        }) => {
            check_count(n)?;
            io::check_extension(&out).map_err(|e| e.to_string())?;
            let roll = SwissRoll::new(noise).map_err(|e| e.to_string())?;
            let data = roll.stream(seed).next_batch(n);
            write_rows(&out, n, 2, data, "Swiss-roll points")
        }
        Command::Data(DataCommand::Heartbeat {
            n,
            out,
            seed,
            length,
            period,
        }) => {
            check_count(n)?;
            io::check_extension(&out).map_err(|e| e.to_string())?;
            let beat = Heartbeat::new(length, period).map_err(|e| e.to_string())?;
            let data = beat.stream_with(diffusion_data::rng(seed, 0)).next_batch(n);
            write_rows(&out, n, length, data, "heartbeat sequences")
        }
    }
}

/// Writes `rows` generated rows of `cols` values to `out` (.csv or .npy) and says so.
fn write_rows(
    out: &Path,
    rows: usize,
    cols: usize,
    data: Vec<f32>,
    what: &str,
) -> Result<(), String> {
    let array = Array2::new(rows, cols, data).map_err(|e| e.to_string())?;
    io::write(out, &array).map_err(|e| e.to_string())?;
    eprintln!("wrote {rows} {what} to {}", out.display());
    Ok(())
}

/// Held-out points for an evaluation: 10,000, or fewer when the full sum over t would exceed
/// two million rows (at least 1,000).
fn default_eval_points(steps: usize) -> usize {
    (2_000_000 / steps.saturating_sub(1).max(1)).clamp(1_000, 10_000)
}

fn check_count(n: usize) -> Result<(), String> {
    if n == 0 {
        Err("-n must be at least 1".into())
    } else {
        Ok(())
    }
}

pub fn read_config(path: &Path) -> Result<RunConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    RunConfig::from_toml(&text).map_err(|e| format!("config {}: {e}", path.display()))
}

/// Splits `points` by a seeded shuffle into (training rows, held-out rows).
fn split(points: &Array2, fraction: f64, seed: u64) -> Result<(Array2, Array2), String> {
    if points.rows < 2 {
        return Err(format!(
            "the data file has {} row(s); at least 2 are needed to hold some out",
            points.rows
        ));
    }
    let mut order: Vec<usize> = (0..points.rows).collect();
    order.shuffle(&mut diffusion_data::rng(seed, streams::HELDOUT));
    let held = ((points.rows as f64 * fraction).round() as usize).clamp(1, points.rows - 1);
    let take = |idx: &[usize]| {
        let mut data = Vec::with_capacity(idx.len() * points.cols);
        for &i in idx {
            data.extend_from_slice(points.row(i));
        }
        Array2::new(idx.len(), points.cols, data).expect("consistent shape")
    };
    Ok((take(&order[held..]), take(&order[..held])))
}

/// A run ready to train: its folder, manifest, training stream, and the checkpoint it
/// continues from.
struct Prepared {
    run: RunDir,
    manifest: RunManifest,
    data: TrainingData,
    resume: Option<Checkpoint>,
}

fn cmd_train(a: TrainArgs) -> Result<(), String> {
    let (prepared, backend, device) = match &a.resume {
        Some(dir) => resume_run(dir, &a.backend)?,
        None => new_run(&a)?,
    };
    let eval_n = a
        .eval_n
        .unwrap_or_else(|| default_eval_points(prepared.manifest.config.diffusion.steps));
    check_count(eval_n).map_err(|_| "--eval-n must be at least 1".to_string())?;
    let Prepared {
        run,
        manifest,
        data,
        resume,
    } = prepared;
    let t = &manifest.config.train;
    match &resume {
        Some(ck) => eprintln!(
            "resuming {} at step {} of {} on {}",
            run.path().display(),
            ck.state.step,
            t.steps,
            backend.name()
        ),
        None => eprintln!(
            "training {} steps at batch {} on {} (T = {}, {:?} parametrization) into {}",
            t.steps,
            t.batch_size,
            backend.name(),
            manifest.config.diffusion.steps,
            manifest.config.diffusion.parametrization,
            run.path().display()
        ),
    }

    let mut reporter = Reporter::new(t.steps, resume.as_ref().map_or(0, |c| c.state.step), t.loss);
    let (model, summary) = train(&manifest, data, &device, &run, resume.as_ref(), &mut |p| {
        reporter.report(p)
    })
    .map_err(|e| e.to_string())?;
    reporter.finish();
    eprintln!(
        "trained {} steps in {:.1} s ({:.1} steps/s)",
        summary.steps, summary.wall_time_s, summary.steps_per_s
    );
    let eval = evaluate(&manifest, &run, &model, &device, eval_n, a.eval_samples, 0)
        .map_err(|e| e.to_string())?;
    run.write_json("evaluation.json", &eval)
        .map_err(|e| e.to_string())?;
    print_evaluation(&eval);
    println!("run folder: {}", run.path().display());
    Ok(())
}

/// Opens a run folder to continue it from its newest checkpoint.
fn resume_run(
    dir: &Path,
    backend: &BackendArg,
) -> Result<(Prepared, Backend, burn::tensor::Device), String> {
    let run = RunDir::open(dir).map_err(|e| e.to_string())?;
    let manifest = run.manifest().map_err(|e| e.to_string())?;
    let adapter = backend.device;
    let backend = match backend.backend {
        Some(b) => b,
        None => Backend::from_str(&manifest.backend, true)
            .map_err(|_| format!("{}: unknown backend {:?}", dir.display(), manifest.backend))?,
    };
    let device = backend.device(adapter)?;
    let resume = checkpoint::latest(&run, &manifest.config)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{} has no checkpoint to resume from (none in {})",
                dir.display(),
                checkpoint::folder(&run).display()
            )
        })?;
    let seed = manifest.config.train.seed;
    let stream = diffusion_data::rng(seed, streams::TRAIN_DATA);
    let data =
        match TrainingData::generator(&manifest.config.data, stream).map_err(|e| e.to_string())? {
            Some((data, _)) => data,
            None => {
                let rows = io::read(&run.file(TRAIN_ROWS)).map_err(|e| format!("run {e}"))?;
                if rows.cols != manifest.data_dim {
                    return Err(format!(
                        "{}: {} columns where the run has {}",
                        run.file(TRAIN_ROWS).display(),
                        rows.cols,
                        manifest.data_dim
                    ));
                }
                TrainingData::points(rows, seed)
            }
        };
    Ok((
        Prepared {
            run,
            manifest,
            data,
            resume: Some(resume),
        },
        backend,
        device,
    ))
}

/// The training rows of a run trained on a data file, kept in the run folder for `--resume`.
const TRAIN_ROWS: &str = "train.npy";

/// Reads the config and data of a new run, then creates its folder.
fn new_run(a: &TrainArgs) -> Result<(Prepared, Backend, burn::tensor::Device), String> {
    let config_path = a.config.as_deref().expect("clap requires --config");
    let mut config = read_config(config_path)?;
    if let Some(s) = a.steps {
        config.train.steps = s;
    }
    if let Some(b) = a.batch_size {
        config.train.batch_size = b;
    }
    if let Some(s) = a.seed {
        config.train.seed = s;
    }
    if let Some(c) = a.checkpoint_every {
        config.train.checkpoint_every = c;
    }
    if let Some(path) = &a.data {
        let heldout_fraction = match &config.data {
            DataConfig::File {
                heldout_fraction, ..
            } => *heldout_fraction,
            _ => 0.1,
        };
        config.data = DataConfig::File {
            path: path.clone(),
            heldout_fraction,
        };
    }
    config
        .validate()
        .map_err(|e| format!("config {}: {e}", config_path.display()))?;
    let (backend, device) = a.backend.resolve()?;

    // Load the data before touching the run folder, so bad data leaves no trace.
    let seed = config.train.seed;
    let binary = config.diffusion.process == ProcessKind::Binomial;
    let mut files = None;
    let (data, dim, mean_activity) = match &config.data {
        DataConfig::SwissRoll { noise } => {
            let roll = SwissRoll::new(*noise).map_err(|e| e.to_string())?;
            (TrainingData::swiss_roll(roll, seed), 2, None)
        }
        DataConfig::Heartbeat { length, period } => {
            let beat = Heartbeat::new(*length, *period).map_err(|e| e.to_string())?;
            let activity = beat.mean_activity();
            (TrainingData::heartbeat(beat, seed), *length, Some(activity))
        }
        DataConfig::File {
            path,
            heldout_fraction,
        } => {
            let points = io::read(path).map_err(|e| format!("data {e}"))?;
            if binary && let Some(i) = points.data.iter().position(|&v| v != 0.0 && v != 1.0) {
                return Err(format!(
                    "data {}: value {} at row {}, column {} is not 0 or 1, as binomial diffusion needs",
                    path.display(),
                    points.data[i],
                    i / points.cols,
                    i % points.cols
                ));
            }
            let (train_rows, held) = split(&points, *heldout_fraction, seed)?;
            let dim = points.cols;
            let activity = train_rows.data.iter().map(|&v| v as f64).sum::<f64>()
                / train_rows.data.len() as f64;
            files = Some((train_rows.clone(), held));
            (TrainingData::points(train_rows, seed), dim, Some(activity))
        }
    };
    if binary && config.diffusion.pi.is_none() {
        let pi = mean_activity.unwrap_or(0.5);
        if !(pi > 0.0 && pi < 1.0) {
            return Err(format!(
                "the data's mean activity is {pi}; set diffusion.pi in (0, 1) explicitly"
            ));
        }
        config.diffusion.pi = Some(pi);
    }
    let check = RunManifest::new(config.clone(), dim, backend.name());
    check.check_model_size()?;
    let bound_check = check.bound()?;
    if let diffusion_models::bound::Diffusion::Gaussian(g) = &bound_check {
        let abar_t = g.diffusion.alpha_bar(g.diffusion.steps());
        if abar_t > 0.1 {
            eprintln!(
                "warning: abar_T = {abar_t:.3}: the forward process does not reach near N(0, I); \
                 the bound will be loose"
            );
        }
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
    let run = RunDir::create(&out, a.overwrite).map_err(|e| e.to_string())?;
    if a.overwrite {
        // Old checkpoints belong to the run being replaced.
        let old = checkpoint::folder(&run);
        if old.exists() {
            std::fs::remove_dir_all(&old)
                .map_err(|e| format!("cannot remove {}: {e}", old.display()))?;
        }
    }
    let manifest = RunManifest::new(config, dim, backend.name());
    run.write_json("config.json", &manifest)
        .map_err(|e| e.to_string())?;
    if let Some((train_rows, held)) = &files {
        io::write(&run.file(TRAIN_ROWS), train_rows).map_err(|e| e.to_string())?;
        io::write(&run.file("heldout.npy"), held).map_err(|e| e.to_string())?;
    }
    Ok((
        Prepared {
            run,
            manifest,
            data,
            resume: None,
        },
        backend,
        device,
    ))
}

pub fn load_run(
    path: &Path,
    backend: &BackendArg,
) -> Result<
    (
        RunDir,
        RunManifest,
        diffusion_models::ReverseModel<diffusion_models::Network>,
        burn::tensor::Device,
    ),
    String,
> {
    let run = RunDir::open(path).map_err(|e| e.to_string())?;
    let manifest = run.manifest().map_err(|e| e.to_string())?;
    let (_, device) = backend.resolve()?;
    let model = run
        .load_model(&manifest, &device)
        .map_err(|e| e.to_string())?;
    Ok((run, manifest, model, device))
}

fn cmd_evaluate(a: EvaluateArgs) -> Result<(), String> {
    let (run, manifest, model, device) = load_run(&a.run, &a.backend)?;
    let n =
        a.n.unwrap_or_else(|| default_eval_points(manifest.config.diffusion.steps));
    check_count(n).map_err(|_| "--n must be at least 1".to_string())?;
    let eval = evaluate(&manifest, &run, &model, &device, n, a.samples, a.seed)
        .map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", serde_json::to_string(&eval).expect("serialisable"));
    } else {
        print_evaluation(&eval);
    }
    Ok(())
}

fn cmd_gradient_variance(a: GradientVarianceArgs) -> Result<(), String> {
    if a.batches < 2 {
        return Err("--batches must be at least 2".into());
    }
    let run = RunDir::open(&a.run).map_err(|e| e.to_string())?;
    let manifest = run.manifest().map_err(|e| e.to_string())?;
    let batch_size = a.batch_size.unwrap_or(manifest.config.train.batch_size);
    check_count(batch_size).map_err(|_| "--batch-size must be at least 1".to_string())?;
    let (_, device) = a.backend.resolve()?;
    let g = diffusion_models::gradient_variance::gradient_variance(
        &manifest, &run, &device, a.batches, batch_size, a.seed,
    )
    .map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", serde_json::to_string(&g).expect("serialisable"));
        return Ok(());
    }
    println!(
        "{} batches of {} per estimator (minus the Monte-Carlo K, bits per point)",
        g.batches, g.batch_size
    );
    for (name, s) in [("uniform t", &g.uniform), ("importance t", &g.importance)] {
        println!(
            "{name:<13} loss {:+.4} (variance {:.4e})  gradient variance {:.4e}",
            s.loss_mean, s.loss_variance, s.gradient_variance
        );
    }
    println!(
        "importance sampling divides the gradient variance by {:.2} and the loss variance by {:.2}",
        g.gradient_variance_ratio,
        g.uniform.loss_variance / g.importance.loss_variance
    );
    Ok(())
}

fn cmd_sample(a: SampleArgs) -> Result<(), String> {
    check_count(a.n)?;
    io::check_extension(&a.out).map_err(|e| e.to_string())?;
    let (_, manifest, model, device) = load_run(&a.run, &a.backend)?;
    let bound = manifest.bound_of(&model)?;
    let mut rng = diffusion_data::rng(a.seed, streams::SAMPLE);
    let data = bound.sample(
        &model.network,
        a.n,
        &mut rng,
        &device,
        diffusion_models::evaluate::SAMPLE_CHUNK_ROWS,
    );
    write_rows(&a.out, a.n, manifest.data_dim, data, "samples")
}

fn print_evaluation(e: &Evaluation) {
    println!(
        "K          = {:+.4} ± {:.4} bits/point  (n = {}, T = {})",
        e.k_bits, e.k_stderr_bits, e.n, e.steps_t
    );
    println!("L_null     = {:+.4} bits/point", e.l_null_bits);
    println!("K - L_null = {:+.4} bits/point", e.k_minus_l_null_bits);
    match (e.neg_data_entropy_bits, e.gap_bits) {
        (Some(h), Some(gap)) => {
            println!(
                "-H(data)   = {:+.4} ± {:.4} bits/point (the ceiling for K)",
                h,
                e.neg_data_entropy_stderr_bits.unwrap_or(0.0)
            );
            println!("gap        = {gap:+.4} bits/point (-H(data) - K)");
        }
        _ => println!("-H(data)   = unknown (data from a file)"),
    }
    if let (Some(ed), Some(n)) = (e.energy_distance, e.samples) {
        match e.energy_distance_floor {
            Some(floor) => println!(
                "energy     = {ed:.4} between {n} samples and fresh data (two data sets: {floor:.4})"
            ),
            None => println!("energy     = {ed:.4} between {n} samples and held-out data"),
        }
    }
    if let (Some(v), Some(p), Some(n)) = (e.valid_fraction, &e.phase_fractions, e.samples) {
        let phases: Vec<String> = p.iter().map(|f| format!("{:.3}", f)).collect();
        println!(
            "valid      = {:.4} of {n} samples; phases {}",
            v,
            phases.join(" ")
        );
    }
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
