//! Evaluation of a trained run: the full-sum bound K on held-out points, with L_null and the
//! data's own entropy beside it, all in bits per point.

use burn::tensor::Device;
use diffusion_core::MeanStderr;
use diffusion_data::{Heartbeat, SwissRoll};
use serde::{Deserialize, Serialize};

use crate::bound::Diffusion;
use crate::config::{DataConfig, LastStep};
use crate::data::{TrainingData, streams};
use crate::network::{ReverseModel, ReverseNetwork};
use crate::run::{RunDir, RunError, RunManifest};
use crate::sampling::Sampler;

/// The most samples (and data points) the energy distance compares: O(n^2) pairs.
pub const ENERGY_POINTS: usize = 4_000;

/// Rows per evaluation chunk (bounds memory whatever n and T are).
pub const CHUNK_ROWS: usize = 16_384;

/// Reverse chains run side by side when sampling: bounds memory whatever n is, and keeps a
/// step's activations in cache (measured with the presentation's model on 2 cores, 100,000
/// points through T = 200: 770k point-steps/s in chunks of 65,536 rows, 968k at 16,384,
/// 1,074k at 4,096, 928k at 2,048).
pub const SAMPLE_CHUNK_ROWS: usize = 4_096;

/// The result of `diffusion evaluate`, in bits per point (per sequence for binary data), in the
/// data's own units (as read from the file, for file data).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// The bound K (mean over held-out points of the full sum over t).
    pub k_bits: f64,
    /// Its standard error over points.
    pub k_stderr_bits: f64,
    /// K / d.
    #[serde(default)]
    pub k_bits_per_dim: f64,
    /// The data dimension d.
    #[serde(default)]
    pub dim: usize,
    /// L_null: the log-likelihood of the null model (averaged over the held-out points). For
    /// generator data N(0, I), -d/2 log2(2 pi e); for Gaussian file data N(m, diag s^2) with
    /// the training rows' mean and standard deviations; for binary data i.i.d. Bernoulli(pi).
    pub l_null_bits: f64,
    /// K - L_null.
    pub k_minus_l_null_bits: f64,
    /// File data that the run standardised: K in the standardised space (the figure training
    /// optimises); `k_bits` is this plus `log_jacobian_bits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_bits_standardized: Option<f64>,
    /// File data that the run standardised: L_null of N(0, I) in the standardised space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l_null_bits_standardized: Option<f64>,
    /// File data that the run standardised: what the change of units adds, -sum_i log2 s_i
    /// (plus, with a logit map, its log-derivative averaged over the held-out points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_jacobian_bits: Option<f64>,
    /// Dequantised data: the bound is one on the discrete values' log-probability
    /// (log P(k) >= E_u log p(k + u)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dequantized: bool,
    /// -H(data), the ceiling for K, when the data's density is known (generator data).
    pub neg_data_entropy_bits: Option<f64>,
    /// The Monte-Carlo standard error of -H(data).
    pub neg_data_entropy_stderr_bits: Option<f64>,
    /// -H(data) - K, the model's distance from the best possible bound.
    pub gap_bits: Option<f64>,
    /// Held-out points used.
    pub n: usize,
    /// Trajectory length T.
    pub steps_t: usize,
    /// The shorter chain evaluated, when not the full one (`respaced, K steps` or `ddim, ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// Heartbeat data: the share of samples that are one of the valid sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_fraction: Option<f64>,
    /// Heartbeat data: the share of samples with each phase (first pulse at bin 0, 1, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_fractions: Option<Vec<f64>>,
    /// Continuous data: the energy distance (see `diffusion_core::energy_distance`) between
    /// samples and as many held-out or fresh data points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_distance: Option<f64>,
    /// Generator data: the same figure between two fresh data sets of that size, the value a
    /// perfect model would reach up to noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_distance_floor: Option<f64>,
    /// How many samples the sample metrics are of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// How K was computed over the chain: `full sum` or `stratified, K steps per point`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_estimate: Option<String>,
    /// Dequantised integer data: the negative log-likelihood bound of the discrete values in bits
    /// per dimension, -K / d (SPEC section 7: the figure image papers report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_bits_per_dim: Option<f64>,
    /// Its standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_stderr_bits_per_dim: Option<f64>,
    /// Dequantised integer data: the same figure for independent per-coordinate histograms of the
    /// values (one bin per integer, add-one smoothing) fitted on the training rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram_bits_per_dim: Option<f64>,
    /// Binary data: K in nats per point (the unit binarised-MNIST results use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_nats: Option<f64>,
}

/// How [`evaluate_with`] computes K over the chain for each point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundEstimate {
    /// Every step t of the bound (2..T, or 1..T with a decoder) ([`crate::process::bound_bits_per_point`]).
    FullSum,
    /// This many steps per point, drawn in strata ([`crate::process::bound_bits_stratified`]):
    /// unbiased, for chains whose full sum would take too long (images).
    Stratified(usize),
}

/// Steps per point of the stratified estimate that image runs use by default.
pub const IMAGE_T_DRAWS: usize = 32;

impl BoundEstimate {
    /// The full sum, except for image runs: [`IMAGE_T_DRAWS`] stratified steps per image.
    pub fn default_for(manifest: &RunManifest) -> Self {
        match manifest.image {
            Some(_) => Self::Stratified(IMAGE_T_DRAWS),
            None => Self::FullSum,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::FullSum => "full sum".into(),
            Self::Stratified(k) => format!("stratified, {k} steps per point"),
        }
    }
}

/// The first `n` held-out rows of a run (all of them, if the held-out file has fewer), in the
/// data's own units: generator draws, or the rows of `heldout.npy` as read from the file.
pub fn heldout_rows(manifest: &RunManifest, run: &RunDir, n: usize) -> Result<Vec<f32>, RunError> {
    let rng = diffusion_data::rng(manifest.config.train.seed, streams::HELDOUT);
    let generator =
        TrainingData::generator(&manifest.config.data, rng).map_err(|e| RunError::Corrupt {
            path: run.file("config.json").display().to_string(),
            message: e.to_string(),
        })?;
    if let Some((mut stream, _)) = generator {
        return Ok(stream.next_batch(n));
    }
    // File data: the held-out rows of the run's split or test file.
    let (_, a) = crate::setup::file_rows(manifest, run)?;
    let rows = n.min(a.rows);
    Ok(a.data[..rows * a.cols].to_vec())
}

/// The first `n` held-out rows of a run, dequantised (a seeded draw) when the run says so:
/// still in the data's own units.
pub fn heldout_dequantized(
    manifest: &RunManifest,
    run: &RunDir,
    n: usize,
) -> Result<Vec<f32>, RunError> {
    let mut rows = heldout_rows(manifest, run, n)?;
    if let Some(s) = &manifest.standardization {
        let mut rng = diffusion_data::rng(manifest.config.train.seed, streams::DEQUANTIZE);
        s.dequantize(&mut rows, &mut rng);
    }
    Ok(rows)
}

/// The first `n` held-out points of a run in the space the model diffuses: the held-out rows,
/// dequantised and standardised when the run says so.
pub fn heldout_points(
    manifest: &RunManifest,
    run: &RunDir,
    n: usize,
) -> Result<Vec<f32>, RunError> {
    let mut rows = heldout_dequantized(manifest, run, n)?;
    if let Some(s) = &manifest.standardization {
        s.apply(&mut rows);
    }
    Ok(rows)
}

/// Evaluates `model` on the run's held-out points: K from the full sum over the steps t (one draw of
/// x_t per point and step, seeded by `seed`), L_null, and -H(data) for generator data. For
/// heartbeat data it also draws `samples` sequences and reports the valid share and the phases;
/// for continuous data, the energy distance of as many samples (up to [`ENERGY_POINTS`]).
pub fn evaluate<N: ReverseNetwork>(
    manifest: &RunManifest,
    run: &RunDir,
    model: &ReverseModel<N>,
    device: &Device,
    n: usize,
    samples: usize,
    seed: u64,
) -> Result<Evaluation, RunError> {
    evaluate_with(
        manifest,
        run,
        model,
        device,
        n,
        samples,
        seed,
        &Sampler::Ancestral,
        BoundEstimate::default_for(manifest),
    )
}

/// [`evaluate`] with another sampler: K is the bound of the chain it runs (the respaced chain's
/// for [`Sampler::Respaced`]; the full chain's for DDIM, which has none of its own) and the
/// samples are its samples; and with K over the full chain summed or estimated (`estimate`;
/// a respaced chain is always summed).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with<N: ReverseNetwork>(
    manifest: &RunManifest,
    run: &RunDir,
    model: &ReverseModel<N>,
    device: &Device,
    n: usize,
    samples: usize,
    seed: u64,
    sampler: &Sampler,
    estimate: BoundEstimate,
) -> Result<Evaluation, RunError> {
    let (bound, rows, points) = bound_and_points(manifest, run, model, n)?;
    sampler.check_for(&bound)?;
    let mut rng = diffusion_data::rng(seed, streams::EVAL_NOISE);
    let estimate = match sampler {
        Sampler::Respaced(_) => BoundEstimate::FullSum,
        _ => estimate,
    };
    let per_point = match estimate {
        BoundEstimate::Stratified(draws) => bound.bound_bits_stratified(
            &model.network,
            &points,
            draws,
            &mut rng,
            device,
            manifest.chunk_rows(CHUNK_ROWS),
        ),
        BoundEstimate::FullSum => bound.bound_bits_with(
            &model.network,
            sampler,
            &points,
            &mut rng,
            device,
            manifest.chunk_rows(CHUNK_ROWS),
        )?,
    };
    let held = Held {
        bound: &bound,
        rows: &rows,
        points: &points,
    };
    let mut eval = held.evaluation(manifest, run, &per_point, n)?;
    eval.sampler = match sampler {
        Sampler::Ancestral => None,
        Sampler::Respaced(k) => Some(format!("respaced, {k} steps")),
        Sampler::Ddim(o) => Some(format!("ddim, {} steps, eta {}", o.steps, o.eta)),
    };
    eval.bound_estimate = Some(estimate.describe());
    // checked above (check_for), so sampling cannot fail
    let draw = |m: usize| {
        let mut rng = diffusion_data::rng(seed, streams::SAMPLE);
        bound
            .sample_with(
                &model.network,
                sampler,
                m,
                &mut rng,
                device,
                manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
            )
            .expect("a sampler already checked")
    };
    eval.set_sample_metrics(manifest, run, &bound, &draw, samples, seed)?;
    Ok(eval)
}

/// A run's held-out points for its bound: in the data's units (`rows`) and in the space the
/// model diffuses (`points`).
struct Held<'a> {
    bound: &'a Diffusion,
    rows: &'a [f32],
    points: &'a [f32],
}

impl Held<'_> {
    /// The evaluation of the per-point bounds `per_point` (bits, in the space the model
    /// diffuses) in the data's own units, with L_null and, for integer data, bits per dimension
    /// beside the histograms' (`n` held-out rows); no sample metrics yet.
    fn evaluation(
        &self,
        manifest: &RunManifest,
        run: &RunDir,
        per_point: &[f64],
        n: usize,
    ) -> Result<Evaluation, RunError> {
        let none = || RunError::Corrupt {
            path: run.path().display().to_string(),
            message: "no held-out points".into(),
        };
        let k = MeanStderr::of(per_point).ok_or_else(none)?;
        let (d, bound) = (self.bound.dim(), self.bound);
        let discrete = bound.decodes();
        let (k_own, l_null, standardized) = self.own_units(manifest, per_point, k, discrete);
        let k_own = k_own.ok_or_else(none)?;
        let k_bits = k_own.mean;
        let dequantized = manifest
            .standardization
            .as_ref()
            .is_some_and(|s| s.dequantize);
        let per_dim = dequantized || discrete;
        Ok(Evaluation {
            k_bits,
            k_stderr_bits: k_own.stderr,
            k_bits_per_dim: k_bits / d as f64,
            dim: d,
            l_null_bits: l_null,
            k_minus_l_null_bits: k_bits - l_null,
            k_bits_standardized: standardized.map(|s| s.0),
            l_null_bits_standardized: standardized.map(|s| s.1),
            log_jacobian_bits: standardized.map(|s| s.2),
            dequantized,
            neg_data_entropy_bits: None,
            neg_data_entropy_stderr_bits: None,
            gap_bits: None,
            n: k.n,
            steps_t: bound.steps(),
            sampler: None,
            valid_fraction: None,
            phase_fractions: None,
            samples: None,
            energy_distance: None,
            energy_distance_floor: None,
            bound_estimate: None,
            nll_bits_per_dim: per_dim.then(|| -k_bits / d as f64),
            nll_stderr_bits_per_dim: per_dim.then(|| k_own.stderr / d as f64),
            histogram_bits_per_dim: match per_dim {
                true => histogram_bits_per_dim(manifest, run, n)?,
                false => None,
            },
            k_nats: matches!(bound, Diffusion::Binomial(_)).then(|| k_bits * diffusion_core::LN_2),
        })
    }

    /// K in the data's own units: the Jacobian of the standardisation added point by point (a
    /// constant, unless a logit map makes it depend on the point), and the null model of these
    /// data; with K, L_null and the Jacobian in the standardised space when the map changed the
    /// units. A discretised decoder's K is a log-probability of the integers already.
    #[allow(clippy::type_complexity)]
    fn own_units(
        &self,
        manifest: &RunManifest,
        per_point: &[f64],
        k: MeanStderr,
        discrete: bool,
    ) -> (Option<MeanStderr>, f64, Option<(f64, f64, f64)>) {
        let d = self.bound.dim();
        let mean_over = |f: &dyn Fn(&[f32]) -> f64, x: &[f32]| {
            x.chunks_exact(d).map(f).sum::<f64>() / k.n as f64
        };
        let Some(s) = &manifest.standardization else {
            let l_null = mean_over(&|row| self.bound.l_null_bits(row), self.points);
            return (Some(k), l_null, None);
        };
        let l_null = mean_over(&|row| s.null_log_likelihood_bits(row), self.rows);
        if discrete {
            return (Some(k), l_null, None);
        }
        let jacobians: Vec<f64> = self
            .rows
            .chunks_exact(d)
            .map(|r| s.log_jacobian_bits(r))
            .collect();
        let own: Vec<f64> = per_point
            .iter()
            .zip(&jacobians)
            .map(|(k, j)| k + j)
            .collect();
        let standard_normal = mean_over(&standard_normal_bits, self.points);
        let jacobian = jacobians.iter().sum::<f64>() / jacobians.len().max(1) as f64;
        let changed = s.scaling != diffusion_data::Scaling::None || s.logit.is_some();
        let shown = changed.then_some((k.mean, standard_normal, jacobian));
        (MeanStderr::of(&own), l_null, shown)
    }
}

impl Evaluation {
    /// What the data's kind adds: -H(data) for the generators, and from `samples` draws of the
    /// model (`draw(m)`) the Swiss roll's energy distance, the heartbeat's valid share and
    /// phases, or a Gaussian file run's energy distance to the held-out rows.
    fn set_sample_metrics(
        &mut self,
        manifest: &RunManifest,
        run: &RunDir,
        bound: &Diffusion,
        draw: &dyn Fn(usize) -> Vec<f32>,
        samples: usize,
        seed: u64,
    ) -> Result<(), RunError> {
        let d = bound.dim();
        match &manifest.config.data {
            DataConfig::SwissRoll { noise } => {
                if let Ok(roll) = SwissRoll::new(*noise) {
                    self.set_entropy(roll.entropy_bits(self.n.clamp(2_000, 20_000), seed));
                    if samples > 0 {
                        self.set_roll_energy(&roll, draw, samples.min(ENERGY_POINTS), seed);
                    }
                }
            }
            DataConfig::Heartbeat { length, period } => {
                if let Ok(beat) = Heartbeat::new(*length, *period) {
                    self.set_entropy((beat.entropy_bits(), 0.0));
                    if samples > 0 {
                        self.set_phases(&beat, &draw(samples));
                    }
                }
            }
            DataConfig::File { .. } => {
                if samples > 0 && matches!(bound, Diffusion::Gaussian(_)) {
                    // in the data's own units, against the (dequantised) held-out rows
                    let m = samples.min(ENERGY_POINTS);
                    let held = heldout_dequantized(manifest, run, m)?;
                    let rows = held.len() / d;
                    let mut drawn = draw(m);
                    manifest.to_data_units(&mut drawn);
                    if manifest.config.diffusion.decoder == LastStep::Discretized {
                        manifest.to_pixels(&mut drawn);
                    }
                    self.energy_distance = Some(diffusion_core::energy_distance(
                        &drawn[..rows * d],
                        &held,
                        d,
                    ));
                    self.samples = Some(m);
                }
            }
        }
        Ok(())
    }
}

/// The run's process for `model`, and its first `n` held-out rows in the data's units
/// (dequantised when the run says so) and in the space the model diffuses.
fn bound_and_points<N: ReverseNetwork>(
    manifest: &RunManifest,
    run: &RunDir,
    model: &ReverseModel<N>,
    n: usize,
) -> Result<(Diffusion, Vec<f32>, Vec<f32>), RunError> {
    let bound = manifest.bound_of(model).map_err(|e| RunError::Corrupt {
        path: run.file("config.json").display().to_string(),
        message: e.to_string(),
    })?;
    let rows = heldout_dequantized(manifest, run, n)?;
    let mut points = rows.clone();
    if let Some(s) = &manifest.standardization {
        s.apply(&mut points);
    }
    Ok((bound, rows, points))
}

/// The independent per-coordinate histogram's NLL in bits per dimension on the first `n`
/// held-out rows, fitted on the training rows: over 0..=255 for 8-bit images, else over
/// 0..=max of the training rows; `None` unless both are integers in range.
fn histogram_bits_per_dim(
    manifest: &RunManifest,
    run: &RunDir,
    n: usize,
) -> Result<Option<f64>, RunError> {
    use diffusion_data::baselines::{PixelHistogram, integer_range};
    let (train, held) = crate::setup::file_rows(manifest, run)?;
    let held = &held.data[..n.min(held.rows) * held.cols];
    let Some(top) = integer_range(&train) else {
        return Ok(None);
    };
    let top = if manifest.image.is_some() && top <= 255 {
        255
    } else {
        top
    };
    let Ok(histogram) = PixelHistogram::fit(&train, top) else {
        return Ok(None);
    };
    let d = train.cols;
    let mut total = 0.0;
    for row in held.chunks_exact(d) {
        match histogram.log_likelihood_bits(row) {
            Ok(bits) => total += bits,
            Err(_) => return Ok(None),
        }
    }
    let rows = held.len() / d;
    Ok((rows > 0).then(|| -total / (rows * d) as f64))
}

/// log2 N(x; 0, I) of one row.
fn standard_normal_bits(row: &[f32]) -> f64 {
    let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    row.iter()
        .map(|&x| -half_log_2pi - 0.5 * (x as f64).powi(2))
        .sum::<f64>()
        / diffusion_core::LN_2
}

impl Evaluation {
    /// Records -H(data) (with its Monte-Carlo standard error) and the gap to it.
    fn set_entropy(&mut self, (h, stderr): (f64, f64)) {
        self.neg_data_entropy_bits = Some(-h);
        self.neg_data_entropy_stderr_bits = Some(stderr);
        self.gap_bits = Some(-h - self.k_bits);
    }

    /// The energy distance of `m` samples to fresh Swiss-roll points, and its floor: the same
    /// figure between two fresh data sets.
    fn set_roll_energy(
        &mut self,
        roll: &SwissRoll,
        draw: &dyn Fn(usize) -> Vec<f32>,
        m: usize,
        seed: u64,
    ) {
        let drawn = draw(m);
        let fresh = |stream| {
            roll.stream_with(diffusion_data::rng(seed, stream))
                .next_batch(m)
        };
        let (a, b) = (fresh(streams::METRIC_A), fresh(streams::METRIC_B));
        self.energy_distance = Some(diffusion_core::energy_distance(&drawn, &a, 2));
        self.energy_distance_floor = Some(diffusion_core::energy_distance(&b, &a, 2));
        self.samples = Some(m);
    }

    /// The share of heartbeat samples that are valid sequences, and of each phase among them.
    fn set_phases(&mut self, beat: &Heartbeat, drawn: &[f32]) {
        let mut counts = vec![0usize; beat.period()];
        let rows = drawn.chunks_exact(beat.length());
        let samples = rows.len();
        for row in rows {
            if let Some(p) = beat.phase_of(row) {
                counts[p] += 1;
            }
        }
        let valid: usize = counts.iter().sum();
        self.valid_fraction = Some(valid as f64 / samples as f64);
        self.phase_fractions = Some(
            counts
                .iter()
                .map(|&c| c as f64 / valid.max(1) as f64)
                .collect(),
        );
        self.samples = Some(samples);
    }
}

/// The bound's KL term at chosen steps t: where in the chain a model loses its bound
/// (`diffusion terms`). In the space the model diffuses, in bits per point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundTerms {
    /// Held-out points averaged over.
    pub n: usize,
    /// The data dimension d.
    pub dim: usize,
    /// Trajectory length T.
    pub steps_t: usize,
    /// K's constant part (the entropy terms and the fixed edge step), mean over the points.
    pub constant_bits: f64,
    /// What the change of units adds to K for standardised file data (0 otherwise).
    pub log_jacobian_bits: f64,
    /// One row per step, in increasing t.
    pub terms: Vec<StepTerm>,
}

/// The KL term at one step t, `E KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` over the
/// held-out points, in bits per point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTerm {
    /// The step.
    pub t: usize,
    /// Its mean over points (one draw of x_t each).
    pub kl_bits: f64,
    /// The standard error of that mean.
    pub kl_stderr_bits: f64,
}

/// Steps spread from both ends of the bound's steps first..=T (first = 2, or 1 with a decoder),
/// geometrically: about `per_end` from each end (the first and last steps one by one, as
/// [`crate::process::stratify`] treats them), every step when the chain is that short.
pub fn term_steps(first: usize, steps_t: usize, per_end: usize) -> Vec<usize> {
    let count = (steps_t + 1).saturating_sub(first);
    if count <= 2 * per_end {
        return (first..=steps_t).collect();
    }
    let half = count.div_ceil(2) as f64;
    let mut steps: Vec<usize> = (0..per_end)
        .flat_map(|j| {
            let offset = half.powf(j as f64 / (per_end - 1).max(1) as f64).round() as usize;
            // the offset's step from the start and from the end of t = first..=T
            [first - 1 + offset, steps_t + 1 - offset]
        })
        .collect();
    steps.sort_unstable();
    steps.dedup();
    steps
}

/// The bound's terms at `steps` (each in 2..=T, or 1..=T with a decoder) on the first `n` held-out points of a run, one draw
/// of x_t per point and step seeded by `seed`.
pub fn bound_terms<N: ReverseNetwork>(
    manifest: &RunManifest,
    run: &RunDir,
    model: &ReverseModel<N>,
    device: &Device,
    n: usize,
    steps: &[usize],
    seed: u64,
) -> Result<BoundTerms, RunError> {
    let (bound, rows, points) = bound_and_points(manifest, run, model, n)?;
    let d = bound.dim();
    let n = points.len() / d;
    if n == 0 {
        return Err(RunError::Corrupt {
            path: run.path().display().to_string(),
            message: "no held-out points".into(),
        });
    }
    let mut rng = diffusion_data::rng(seed, streams::EVAL_NOISE);
    let per_step = bound.kl_terms_bits(
        &model.network,
        &points,
        steps,
        &mut rng,
        device,
        manifest.chunk_rows(CHUNK_ROWS),
    );
    let mean_over =
        |f: &dyn Fn(&[f32]) -> f64, x: &[f32]| x.chunks_exact(d).map(f).sum::<f64>() / n as f64;
    let discrete = bound.decodes();
    let log_jacobian_bits = match &manifest.standardization {
        Some(s) if !discrete => mean_over(&|r| s.log_jacobian_bits(r), &rows),
        _ => 0.0,
    };
    let terms = steps
        .iter()
        .zip(&per_step)
        .map(|(&t, values)| {
            let m = MeanStderr::of(values).expect("n > 0");
            StepTerm {
                t,
                kl_bits: m.mean,
                kl_stderr_bits: m.stderr,
            }
        })
        .collect();
    Ok(BoundTerms {
        n,
        dim: d,
        steps_t: bound.steps(),
        constant_bits: mean_over(&|r| bound.bound_constant_bits(r), &points),
        log_jacobian_bits,
        terms,
    })
}

#[cfg(test)]
mod tests {
    use super::term_steps;

    #[test]
    fn term_steps_spread_from_both_ends() {
        // a short chain: every step
        assert_eq!(term_steps(2, 20, 16), (2..=20).collect::<Vec<_>>());
        assert_eq!(term_steps(1, 20, 16), (1..=20).collect::<Vec<_>>());
        assert_eq!(term_steps(1, 1000, 16)[..3], [1, 2, 3]);
        let steps = term_steps(2, 1000, 16);
        assert_eq!(steps.first(), Some(&2));
        assert_eq!(steps.last(), Some(&1000));
        assert!(steps.windows(2).all(|w| w[0] < w[1]));
        // the first and last steps one by one, the middle sparse
        for t in [2, 3, 4, 998, 999, 1000] {
            assert!(steps.contains(&t), "{t} in {steps:?}");
        }
        assert!(steps.len() <= 32 && steps.len() >= 24, "{steps:?}");
        // offsets grow geometrically to the middle (about (T - 1) / 2 from each end)
        assert!(steps.contains(&501), "{steps:?}");
    }
}
