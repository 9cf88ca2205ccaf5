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
    /// Draw samples from a trained run, optionally conditioned (--known, --observe).
    Sample(SampleArgs),
    /// Simple models fitted on a file run's training rows, scored on its held-out rows.
    Baselines(BaselinesArgs),
    /// The bound's KL term at each of a set of steps t: where in the chain a model loses bits.
    Terms(TermsArgs),
    /// Conditioned samples against the exact conditional of the run's data (generated data).
    EvaluateConditional(EvaluateConditionalArgs),
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
    /// Train on the points in this file (.csv, .npy, IDX) instead of the config's data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate on the rows of this file (same columns) instead of a share held out of the
    /// training data.
    #[arg(long, value_name = "PATH")]
    pub test_data: Option<PathBuf>,
    /// Held-out points for the evaluation printed at the end [default: 10,000, fewer for long
    /// trajectories: 2,000,000 / (T - 1), at least 1,000].
    #[arg(long)]
    pub eval_n: Option<usize>,
    /// Samples drawn by that evaluation for the sample metrics [default: 2,000; 0 for image
    /// runs, whose chains are long].
    #[arg(long)]
    pub eval_samples: Option<usize>,
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
    /// Samples to draw for the sample metrics (0 skips them) [default: 10,000; 0 for image
    /// runs].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Estimate K from this many steps t per point, drawn in strata of the chain (unbiased)
    /// [default for image runs: 32], instead of the full sum over t.
    #[arg(long, value_name = "K", conflicts_with = "full_sum")]
    pub t_draws: Option<usize>,
    /// Sum K over every step t, also for image runs (T network calls per point).
    #[arg(long)]
    pub full_sum: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Which weights: the moving average when the run has one (train.ema_decay), `raw` for the
    /// optimizer's, `ema` to insist on the average.
    #[arg(long, value_enum, default_value_t = WeightsArg::Default)]
    pub weights: WeightsArg,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub backend: BackendArg,
}

#[derive(Debug, Args)]
pub struct BaselinesArgs {
    /// The run folder (trained on a data file).
    #[arg(long)]
    pub run: PathBuf,
    /// Components of the Bernoulli mixture (binary data).
    #[arg(long, default_value_t = 20)]
    pub components: usize,
    /// EM steps of the mixture.
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TermsArgs {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// Held-out points to average over.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// Steps t, comma-separated (each in 2..=T, or 1..=T with diffusion.decoder) [default: 16 spread geometrically from each end
    /// of the chain, every step of a chain of 32 or fewer].
    #[arg(long, value_delimiter = ',')]
    pub steps: Option<Vec<usize>>,
    /// Seed of the x_t draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the rows as CSV (t, kl_bits, kl_stderr_bits, kl_bits_per_dim).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Which weights (see `evaluate --weights`).
    #[arg(long, value_enum, default_value_t = WeightsArg::Default)]
    pub weights: WeightsArg,
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
    /// Chains run together: with --resample, the size of one particle system (more chains, a
    /// closer approach to the model's own conditional).
    #[arg(long, default_value_t = diffusion_models::evaluate::SAMPLE_CHUNK_ROWS)]
    pub particles: usize,
    #[command(flatten)]
    pub condition: ConditionArgs,
    /// Which weights: the moving average when the run has one (train.ema_decay), `raw` for the
    /// optimizer's, `ema` to insist on the average.
    #[arg(long, value_enum, default_value_t = WeightsArg::Default)]
    pub weights: WeightsArg,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub backend: BackendArg,
}

/// A condition on the samples (paper section 2.5): the model multiplied by known values and
/// noisy observations at every reverse step.
#[derive(Debug, Clone, Default, Args)]
pub struct ConditionArgs {
    /// Known values, comma-separated I=V: 0-based coordinate I held at value V (inpainting).
    #[arg(long, value_name = "I=V,...", allow_hyphen_values = true)]
    pub known: Option<String>,
    /// One noisy observation of every coordinate, comma-separated (bits for binary runs; `nan`
    /// or nothing for a coordinate not observed), or I=V,... for some coordinates, with
    /// --observe-noise (denoising).
    #[arg(long, value_name = "V1,V2,... | I=V,...", allow_hyphen_values = true)]
    pub observe: Option<String>,
    /// The observations' noise: a standard deviation (Gaussian runs, in the data's units) or
    /// the probability that an observed bit is flipped (binary runs).
    #[arg(long, value_name = "S")]
    pub observe_noise: Option<f64>,
    /// Known values per sample: a .csv or .npy with one column per coordinate and one row for
    /// all samples or one per sample; NaN (nan) where a value is not known.
    #[arg(long, value_name = "FILE")]
    pub known_file: Option<PathBuf>,
    /// Observations per sample, as --known-file, with --observe-noise.
    #[arg(long, value_name = "FILE")]
    pub observe_file: Option<PathBuf>,
    /// How the factor follows the step: `constant` multiplies every step by the same r (the
    /// paper's; known values held), `forward` passes r through the forward process q(x_t | x_0),
    /// `likelihood` uses the observation's likelihood given x_t for standard-normal data.
    #[arg(long, value_enum, default_value_t = Mode::Constant)]
    pub condition_mode: Mode,
    /// Run the constant-r chains as a particle system: weigh each chain by how well the model's
    /// kernel agrees with r and resample (sequential Monte Carlo), so that the samples tend to
    /// the model's own p(x_0) r(x_0). On the full or a respaced chain (not DDIM's).
    #[arg(long)]
    pub resample: bool,
    /// Draw every block of --renoise-jump steps R times (RePaint's resampling): between draws
    /// the chains go back through the forward process to the block's first step, so that the
    /// condition's coordinates and the free ones have more steps at each noise level to agree.
    /// R times the network calls; not with --resample.
    #[arg(long, value_name = "R")]
    pub renoise: Option<usize>,
    /// With --renoise: the steps drawn between two returns (RePaint's jump length; default 1).
    #[arg(long, value_name = "J")]
    pub renoise_jump: Option<usize>,
    /// Each sample the mean of K conditioned draws (K independent passes of the chains): the
    /// conditional mean's Monte Carlo estimate, the completion of least expected squared error
    /// (not itself a draw). Known values come out as given. K times the network calls.
    #[arg(long, value_name = "K")]
    pub average: Option<usize>,
    /// Image runs: condition on the run's first N held-out images (sample r on image r mod N),
    /// with --mask (inpainting) or --noisy-test (denoising) saying what is known of them.
    #[arg(long, value_name = "N")]
    pub from_test: Option<usize>,
    /// With --from-test: the region left unknown, the rest of each image held: left-half (the
    /// paper's picture), right-half, top-half, bottom-half, center:S (a centred S x S square).
    #[arg(long, value_name = "MASK")]
    pub mask: Option<String>,
    /// With --from-test: every pixel observed through Gaussian noise of this standard deviation
    /// in the data's units (drawn from --seed); the data's own standard deviation is a
    /// signal-to-noise ratio of 1.
    #[arg(long, value_name = "S")]
    pub noisy_test: Option<f64>,
}

/// A shorter reverse chain: respaced steps or DDIM (options named as diffusers'
/// `DDIMScheduler` names them).
#[derive(Debug, Clone, Args)]
pub struct SamplerArgs {
    /// The reverse chain: every step (`ancestral`), a respaced chain on --sample-steps steps, or
    /// DDIM (Gaussian runs).
    #[arg(long, value_enum, default_value_t = SamplerKind::Ancestral)]
    pub sampler: SamplerKind,
    /// Steps of the respaced or DDIM chain.
    #[arg(long, value_name = "K")]
    pub sample_steps: Option<usize>,
    /// DDIM: 0 is deterministic, 1 has DDPM's posterior variance.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// DDIM: how the timesteps are spread.
    #[arg(long, value_enum, default_value_t = Spacing::Leading)]
    pub timestep_spacing: Spacing,
    /// DDIM: clip the predicted x_0 to [-R, R] (off by default: the data's normalised units
    /// often pass 1).
    #[arg(long)]
    pub clip_sample: bool,
    /// DDIM: R of --clip-sample.
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub clip_sample_range: f64,
    /// DDIM: the last step goes to abar = 1 (else to abar_1).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub set_alpha_to_one: bool,
    /// DDIM: what the model's output is read as (both are derived from the network's implied
    /// x_0; they differ under --clip-sample).
    #[arg(long, value_enum, default_value_t = Prediction::Epsilon)]
    pub prediction_type: Prediction,
}

/// `--sampler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerKind {
    /// Every step.
    Ancestral,
    /// The respaced chain.
    Respaced,
    /// DDIM.
    Ddim,
}

/// `--timestep-spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Spacing {
    /// (0..K) * (T / K).
    Leading,
    /// From T - 1 down in steps of T / K.
    Trailing,
    /// round(linspace(0, T - 1, K)).
    Linspace,
}

/// `--prediction-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Prediction {
    /// The noise.
    Epsilon,
    /// x_0.
    Sample,
}

/// `--weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum WeightsArg {
    /// The moving average when the run has one, else the raw weights.
    #[default]
    Default,
    /// The optimizer's weights after the last step (model.bpk).
    Raw,
    /// The moving average (model_ema.bpk).
    Ema,
}

/// `--condition-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Mode {
    /// r_t = r at every step.
    #[default]
    Constant,
    /// r_t = r passed through the forward process to step t.
    Forward,
    /// r_t(x_t) = the observation's likelihood given x_t for standard-normal (or i.i.d.
    /// Bernoulli) data: N(y; sqrt(abar_t) x_t, 1 - abar_t + s²).
    Likelihood,
    /// With --resample (Gaussian runs): the likelihood mode's r_t as the proposal, the particles
    /// weighed toward the model's own estimate of r given x_t, N(y; x̂_0(x_t), s² + 1 - abar_t);
    /// tends to the model's own conditional.
    Twisted,
}

#[derive(Debug, Args)]
pub struct EvaluateConditionalArgs {
    /// The run folder (trained on generated data: swiss-roll or heartbeat).
    #[arg(long)]
    pub run: PathBuf,
    /// Conditional samples to draw (the energy distance uses up to 4,000 of them).
    #[arg(short = 'n', long = "n", default_value_t = 10_000)]
    pub n: usize,
    /// Seed of the samples and of the exact draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Swiss roll: independent sets of samples whose energy distances (on up to 4,000 of each)
    /// to exact draws are averaged (each more set draws another -n samples).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Chains run together: with --resample, the size of one particle system (more chains, a
    /// closer approach to the model's own conditional).
    #[arg(long, default_value_t = diffusion_models::evaluate::SAMPLE_CHUNK_ROWS)]
    pub particles: usize,
    /// Swiss roll with known values: also estimate the model's own conditional from this many
    /// unconditioned samples (those within 0.01 of the known values), to tell the model's error
    /// from the sampler's (e.g. 400000).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub model_slice: usize,
    /// Image runs: the training images' labels (an IDX file, e.g.
    /// datasets/mnist/train-labels-idx1-ubyte.gz), for the k-nearest-neighbour classifier that
    /// gives each completion a label.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Image runs: the held-out images' labels (e.g. datasets/mnist/t10k-labels-idx1-ubyte.gz),
    /// against which the completions' labels are scored.
    #[arg(long, value_name = "FILE")]
    pub test_labels: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub condition: ConditionArgs,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Which weights: the moving average when the run has one (train.ema_decay), `raw` for the
    /// optimizer's, `ema` to insist on the average.
    #[arg(long, value_enum, default_value_t = WeightsArg::Default)]
    pub weights: WeightsArg,
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
    /// `--what samples`: draw each row as a WIDTHxHEIGHT image (e.g. 8x8 for the digits; the
    /// row is the image's pixels, row by row), --rows of them, 10 a line.
    #[arg(long, value_name = "WIDTHxHEIGHT", value_parser = parse_image)]
    pub image: Option<(usize, usize)>,
    /// `--what samples` of images: draw the first --rows images of this file (as `sample`
    /// wrote it, e.g. with a shorter chain) instead of sampling anew.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// The condition of `--what conditional`.
    #[command(flatten)]
    pub condition: ConditionArgs,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Which weights: the moving average when the run has one (train.ema_decay), `raw` for the
    /// optimizer's, `ema` to insist on the average.
    #[arg(long, value_enum, default_value_t = WeightsArg::Default)]
    pub weights: WeightsArg,
    #[command(flatten)]
    pub backend: BackendArg,
}

/// `WIDTHxHEIGHT`, both at least 1.
fn parse_image(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{text:?} is not WIDTHxHEIGHT (e.g. 8x8)");
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
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
    /// Data and model samples: rasters of bits (binary runs), scatter plots of coordinate
    /// pairs (Gaussian runs of more than 2 dimensions), or images (`--image`).
    Samples,
    /// Data noised by the forward process at the chosen steps, as rasters (binary runs).
    Noising,
    /// Samples conditioned by --known / --observe beside exact draws of the true conditional
    /// (generated data; drawn only when asked for).
    Conditional,
    /// Sample quality (energy distance, or the valid share) and the respaced chain's bound K
    /// against the number of sampling steps K = 10, 20, 50, 100, ..., T, for respaced and DDIM
    /// chains (drawn only when asked for).
    SamplingSteps,
    /// Image runs: held-out images, the same with --mask's region unknown (default left-half),
    /// and four completions of each, a row per image (--from-test images, default 8; drawn only
    /// when asked for; --sampler respaced makes it quick).
    Inpainting,
    /// Image runs: held-out images, the same seen through noise of --noisy-test (default the
    /// data's own standard deviation: a signal-to-noise ratio of 1), and four denoisings of each.
    Denoising,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to time.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// The run configuration whose model and diffusion are timed (train, sample, evaluate).
    #[arg(long, required_if_eq_any = [
        ("workload", "train"), ("workload", "sample"), ("workload", "evaluate"),
    ])]
    pub config: Option<PathBuf>,
    /// Training: examples per step [default: the config's].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Training: optimizer steps timed (after 10 untimed ones).
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Sampling and evaluation: points.
    #[arg(short = 'n', long = "n", default_value_t = 10_000)]
    pub n: usize,
    /// Matmul: the side of the square product timed beside the layer-sized one.
    #[arg(long, default_value_t = 2048)]
    pub side: usize,
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
    /// The cores' f32 matrix-product rate, GFLOP/s: a square product (--side) and a
    /// [4096 x 128] x [128 x 128] one (a hidden layer at batch 4096), through the product the
    /// networks use.
    Matmul,
}
