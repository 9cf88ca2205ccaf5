//! The command line's types: what each subcommand accepts (clap derives). The commands
//! themselves live one per file beside this one.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::Backend;

/// Diffusion probabilistic models (Sohl-Dickstein et al. 2015): train, evaluate, sample.
#[derive(Debug, Parser)]
#[command(name = "diffusion", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model from a config file, then evaluate its bound on held-out data.
    Train(TrainArgs),
    /// The bound K in bits on a run's held-out data, with L_null and -H(data).
    Evaluate(EvaluateArgs),
    /// Draw samples from a trained run.
    Sample(SampleArgs),
    /// Draw a run's pictures (PNG and SVG): trajectories, drift, loss curves, rasters.
    Plot(PlotArgs),
    /// How noisy the training gradient is with uniform and with importance-sampled steps t.
    GradientVariance(GradientVarianceArgs),
    /// Time one workload (training, sampling or evaluation) and print a JSON line.
    Bench(BenchArgs),
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
    pub backend: Option<Backend>,
    /// The wgpu adapter to use, by its number in `diffusion devices` (default: the best one).
    #[arg(long, value_name = "N")]
    pub device: Option<usize>,
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
pub struct TrainArgs {
    /// The run configuration (TOML), e.g. configs/swiss_roll.toml.
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Continue the run in this folder from its newest checkpoint (its config.json, data and
    /// seed; the result is the same as a run that was never interrupted).
    #[arg(long, conflicts_with_all = [
        "config", "out", "overwrite", "steps", "batch_size", "seed", "data", "checkpoint_every"
    ])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArg,
    /// Run folder [default: runs/CONFIG_NAME, or runs/CONFIG_NAME-2, ... if taken].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the files of an existing run folder given by --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Override train.steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override train.batch_size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override train.seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override train.checkpoint_every (0: only a checkpoint at the end).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Train on the points in this .csv or .npy file instead of the config's data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out points for the evaluation printed at the end [default: 10,000, fewer for long
    /// trajectories: 2,000,000 / (T - 1), at least 1,000].
    #[arg(long)]
    pub eval_n: Option<usize>,
    /// Samples drawn by that evaluation for the valid share (heartbeat data).
    #[arg(long, default_value_t = 2_000)]
    pub eval_samples: usize,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// Held-out points to average over [default: 10,000, fewer for long trajectories:
    /// 2,000,000 / (T - 1), at least 1,000].
    #[arg(long)]
    pub n: Option<usize>,
    /// Seed of the x_t draws (and of the samples).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples to draw for the valid share and phases (heartbeat data; 0 skips them).
    #[arg(long, default_value_t = 10_000)]
    pub samples: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub backend: BackendArg,
}

#[derive(Debug, Args)]
pub struct GradientVarianceArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// Independent batches per estimator (at least 2).
    #[arg(long, default_value_t = 200)]
    pub batches: usize,
    /// Examples per batch [default: the run's train.batch_size].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of the batches, steps and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub backend: BackendArg,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long = "n")]
    pub n: usize,
    /// Output file (.csv or .npy).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the reverse chain.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub backend: BackendArg,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
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

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run folder; give it several times to compare loss curves (the other pictures use the
    /// first).
    #[arg(long, required = true)]
    pub run: Vec<PathBuf>,
    /// Folder for the pictures (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Pictures to draw, comma-separated [default: every one that fits the run].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub what: Vec<What>,
    /// Steps t of the trajectory and noising panels, comma-separated [default: 0, T/10, ..., T].
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<usize>,
    /// Points per scatter panel.
    #[arg(short = 'n', long = "n", default_value_t = 1000)]
    pub n: usize,
    /// Sequences per raster panel (binary data).
    #[arg(long, default_value_t = 40)]
    pub rows: usize,
    /// Seed of the pictures' draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rasters: rotate each sequence so that its first pulse is in column 0.
    #[arg(long)]
    pub align: bool,
    #[command(flatten)]
    pub backend: BackendArg,
}

/// A picture `diffusion plot` can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// q(x_t) from data above p(x_t) from the model at the same steps (2-D Gaussian runs).
    Trajectory,
    /// The reverse kernel's drift mu(x, t) - x as arrows at a few t (2-D Gaussian runs).
    Drift,
    /// Training loss against step from metrics.csv, every --run on one chart.
    Loss,
    /// Data and model samples as rasters of bits (binary runs).
    Samples,
    /// Data noised by the forward process at the chosen steps, as rasters (binary runs).
    Noising,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to time.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// The run configuration whose model and diffusion are timed.
    #[arg(long)]
    pub config: PathBuf,
    /// Training: examples per step [default: the config's].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Training: optimizer steps timed (after 10 untimed ones).
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Sampling and evaluation: points.
    #[arg(short = 'n', long = "n", default_value_t = 10_000)]
    pub n: usize,
    #[command(flatten)]
    pub backend: BackendArg,
}

/// A timed workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Training steps (data, noising, forward, backward, Adam): steps/s and examples/s.
    Train,
    /// The reverse chain from x_T to x_0 for n points: points x steps per second.
    Sample,
    /// The full-sum bound over every t for n points: rows (point, t) per second.
    Evaluate,
}
