//! How good the paper's conditional samples are: conditioned samples of a trained run (see
//! [`crate::condition`]) against the exact conditional of the data set, which this project knows
//! for its generated data.
//!
//! - Heartbeat: the exact distribution over the phases given the known or noisy bits
//!   ([`diffusion_data::Heartbeat::phase_posterior`]); reported are the share of samples that are
//!   valid sequences consistent with the known bits, and the total-variation distance between
//!   the samples' phase frequencies (invalid samples a category of their own, of exact
//!   probability 0) and the exact conditional.
//! - Swiss roll: exact draws of the posterior ([`diffusion_data::SwissRoll::posterior`]);
//!   reported is the energy distance between the conditional samples and exact draws, averaged
//!   over several independent sets of samples, beside its floor: the mean (and spread) of the
//!   same figure over [`FLOOR_PAIRS`] pairs of sets of exact draws of the same size. The energy
//!   distance of two finite sets is positive even when both follow one distribution, and one
//!   pair's value swings severalfold from seed to seed, so neither a single figure nor a single
//!   floor says how far the samples are from the truth; their means, with standard errors, do.

use burn::tensor::Device;
use diffusion_core::MeanStderr;
use diffusion_data::{DataError, Heartbeat, Rng, RollPosterior, SwissRoll};
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::condition::ConditionMode;
use crate::condition::{Cell, ConditionError, Conditioning};
use crate::config::{ConfigError, DataConfig};
use crate::data::streams;
use crate::evaluate::{ENERGY_POINTS, SAMPLE_CHUNK_ROWS};
use crate::network::{ReverseModel, ReverseNetwork};
use crate::run::RunManifest;

/// Pairs of sets of exact draws whose energy distances make the floor (mean and spread).
pub const FLOOR_PAIRS: usize = 32;

/// How far from a known value an unconditioned sample may lie to count towards the model's own
/// conditional ([`ConditionalOptions::model_slice`]), in the data's units.
pub const SLICE_HALF_WIDTH: f32 = 0.01;

/// Why a conditional evaluation cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ConditionalError {
    /// The condition does not fit the run.
    #[error(transparent)]
    Condition(#[from] ConditionError),
    /// The data set refuses the observation (e.g. known bits no sequence has).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The run's process cannot be rebuilt.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The run's data are a file, whose exact conditional is unknown.
    #[error(
        "the exact conditional is known for generated data only (swiss-roll, heartbeat), this run was trained on a file"
    )]
    NoReference,
    /// One condition per sample: the exact reference is for one shared condition.
    #[error(
        "the exact conditional is for one condition shared by every sample, not one per sample"
    )]
    PerSample,
}

/// The exact conditional of a generated data set given one condition.
#[derive(Debug, Clone)]
pub enum Exact {
    /// The heartbeat: the distribution over phases.
    Heartbeat {
        /// The data set.
        beat: Heartbeat,
        /// P(phase | condition).
        phases: Vec<f64>,
    },
    /// The Swiss roll's posterior.
    SwissRoll(RollPosterior),
}

impl Exact {
    /// The exact conditional of the run's data given `given` (one shared condition).
    pub fn of(data: &DataConfig, given: &Conditioning) -> Result<Self, ConditionalError> {
        if given.rows() != 1 {
            return Err(ConditionalError::PerSample);
        }
        match data {
            DataConfig::Heartbeat { length, period } => {
                let beat = Heartbeat::new(*length, *period)?;
                let observations: Vec<(usize, bool, f64)> = (0..given.dim())
                    .filter_map(|i| match given.cell(0, i) {
                        Cell::Free => None,
                        Cell::Known(v) => Some((i, v >= 0.5, 0.0)),
                        Cell::Observed(y, e) => Some((i, y >= 0.5, e)),
                    })
                    .collect();
                let phases = beat.phase_posterior(&observations)?;
                Ok(Self::Heartbeat { beat, phases })
            }
            DataConfig::SwissRoll { noise } => {
                let roll = SwissRoll::new(*noise)?;
                let obs = [0, 1].map(|i| match given.cell(0, i) {
                    Cell::Free => None,
                    Cell::Known(v) => Some((v as f64, 0.0)),
                    Cell::Observed(y, s) => Some((y as f64, s)),
                });
                Ok(Self::SwissRoll(roll.posterior(obs)?))
            }
            DataConfig::File { .. } => Err(ConditionalError::NoReference),
        }
    }

    /// `n` exact draws, row-major `[n, d]`.
    pub fn sample(&self, n: usize, rng: &mut Rng) -> Vec<f32> {
        match self {
            Self::Heartbeat { beat, phases } => {
                let mut out = Vec::with_capacity(n * beat.length());
                for _ in 0..n {
                    let u: f64 = rand::Rng::random(rng);
                    let mut acc = 0.0;
                    let mut phase = phases.len() - 1;
                    for (p, w) in phases.iter().enumerate() {
                        acc += w;
                        if u < acc {
                            phase = p;
                            break;
                        }
                    }
                    out.extend(beat.sequence(phase));
                }
                out
            }
            Self::SwissRoll(post) => post.sample(n, rng).into_iter().map(|v| v as f32).collect(),
        }
    }
}

/// The result of `diffusion evaluate-conditional`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConditionalEvaluation {
    /// Conditional samples drawn.
    pub samples: usize,
    /// `constant` (the paper's product), `forward` (the observation through q) or
    /// `likelihood` (see [`ConditionMode`]).
    pub mode: String,
    /// Whether the chains were resampled (sequential Monte Carlo).
    pub resampled: bool,
    /// Renoised chains: the draws of each block of steps and the block's length
    /// ([`Conditioning::renoised`]); absent for the plain chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renoised: Option<[usize; 2]>,
    /// Heartbeat: the share of samples that are valid sequences agreeing with every known bit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_consistent_fraction: Option<f64>,
    /// Heartbeat: each phase's share of the samples (invalid samples in none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_fractions: Option<Vec<f64>>,
    /// Heartbeat: the exact P(phase | condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_phases: Option<Vec<f64>>,
    /// Heartbeat: the total-variation distance between the samples' distribution over
    /// {phases, invalid} and the exact conditional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_variation: Option<f64>,
    /// Swiss roll: sets of conditional samples compared with exact draws (`repeats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<usize>,
    /// Swiss roll: the energy distance between (up to [`ENERGY_POINTS`]) conditional samples and
    /// as many exact posterior draws, the mean over the `repeats` sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_distance: Option<f64>,
    /// Swiss roll: the standard error of that mean (0 for one set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_distance_stderr: Option<f64>,
    /// Swiss roll: the floor, the mean energy distance between two sets of exact draws of the
    /// same size, over [`FLOOR_PAIRS`] pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_distance_floor: Option<f64>,
    /// Swiss roll: the standard deviation of one pair's energy distance about that floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_distance_floor_sd: Option<f64>,
    /// Swiss roll: `energy_distance / energy_distance_floor` (1 for exact samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_ratio: Option<f64>,
    /// Swiss roll: the ratio's standard error (both means' errors, to first order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_ratio_stderr: Option<f64>,
    /// Swiss roll, known values: unconditioned samples that fell within [`SLICE_HALF_WIDTH`] of
    /// every known value (the model's own conditional, by rejection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_slice_samples: Option<usize>,
    /// The energy distance of (up to [`ENERGY_POINTS`] of) those to as many exact draws over the
    /// floor (scaled to the sets' sizes, as 1/n + 1/m): how far the model itself is from the
    /// exact conditional, whatever the sampler. One pair of sets: as noisy as one floor draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_slice_ratio: Option<f64>,
    /// The energy distance of the first set of conditional samples to the model's slice over the
    /// floor (scaled likewise): how far the sampler is from the model's own conditional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_to_model_ratio: Option<f64>,
    /// The slice's standard deviation of each coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_slice_sd: Option<Vec<f64>>,
    /// Swiss roll: the standard deviation of each coordinate of the conditional samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_sd: Option<Vec<f64>>,
    /// Swiss roll: the same of exact posterior draws (as many as the samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_sd: Option<Vec<f64>>,
    /// Swiss roll: the mean of the conditional samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_mean: Option<Vec<f64>>,
    /// Swiss roll: the exact posterior mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_mean: Option<Vec<f64>>,
}

/// How many conditional samples [`evaluate_conditional`] draws, and in what systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConditionalOptions {
    /// Conditional samples drawn (the Swiss roll's energy distance uses up to
    /// [`ENERGY_POINTS`] of each set).
    pub n: usize,
    /// Swiss roll: sets of `n` samples, each compared with its own exact draws (at least 1).
    pub repeats: usize,
    /// Chains run together: with resampling, the size of one particle system.
    pub particles: usize,
    /// Seeds the samples and the exact draws.
    pub seed: u64,
    /// Swiss roll with known values only: the model's own conditional estimated from this many
    /// unconditioned samples, those within [`SLICE_HALF_WIDTH`] of every known value (0: none).
    pub model_slice: usize,
}

impl ConditionalOptions {
    /// `n` samples in one set, in systems of [`SAMPLE_CHUNK_ROWS`] chains, seed 0.
    pub fn new(n: usize) -> Self {
        Self {
            n,
            repeats: 1,
            particles: SAMPLE_CHUNK_ROWS,
            seed: 0,
            model_slice: 0,
        }
    }
}

/// Draws samples of `model` conditioned by `given` (one shared condition) and compares them with
/// the exact conditional of the run's data. For the Swiss roll each of `options.repeats` sets of
/// `options.n` samples is compared with its own exact draws (the first set is the one whose
/// mean is reported).
pub fn evaluate_conditional<N: ReverseNetwork>(
    manifest: &RunManifest,
    model: &ReverseModel<N>,
    given: &Conditioning,
    options: ConditionalOptions,
    device: &Device,
) -> Result<ConditionalEvaluation, ConditionalError> {
    let ConditionalOptions {
        n,
        repeats,
        particles,
        seed,
        model_slice,
    } = options;
    let particles = particles.max(1);
    let exact = Exact::of(&manifest.config.data, given)?;
    let bound = manifest.bound_of(model)?;
    let mut rng = diffusion_data::rng(seed, streams::SAMPLE);
    let drawn = bound.sample_given(&model.network, n, given, &mut rng, device, particles)?;
    let mut eval = ConditionalEvaluation::unfilled(n, given);
    match &exact {
        Exact::Heartbeat { beat, phases } => {
            compare_phases(&mut eval, beat, phases, given, &drawn);
        }
        Exact::SwissRoll(post) => {
            let draws = Draws {
                bound: &bound,
                network: &model.network,
                given,
                n,
                particles,
                device,
            };
            let mut exact_a = diffusion_data::rng(seed, streams::METRIC_A);
            let m = n.min(ENERGY_POINTS);
            let floor = energy_over_floor(
                &mut eval,
                &exact,
                &draws,
                &drawn,
                repeats,
                seed,
                &mut exact_a,
                &mut rng,
            )?;
            let exact_draws = exact.sample(n, &mut exact_a);
            record_moments(&mut eval, &drawn, &exact_draws, post);
            if model_slice > 0 {
                let mut slice_rng = diffusion_data::rng(seed, streams::SAMPLE + 100);
                let ours = &drawn[..m * 2];
                compare_with_model_slice(
                    &mut eval,
                    &exact,
                    &draws,
                    ours,
                    floor,
                    model_slice,
                    &mut slice_rng,
                    &mut exact_a,
                );
            }
        }
    }
    Ok(eval)
}

impl ConditionalEvaluation {
    /// The evaluation of `n` samples given `given` before any comparison: every measure unset.
    fn unfilled(n: usize, given: &Conditioning) -> Self {
        Self {
            samples: n,
            mode: given.mode().name().into(),
            resampled: given.resamples(),
            renoised: given.renoising(),
            valid_consistent_fraction: None,
            phase_fractions: None,
            exact_phases: None,
            total_variation: None,
            repeats: None,
            energy_distance: None,
            energy_distance_stderr: None,
            energy_distance_floor: None,
            energy_distance_floor_sd: None,
            energy_ratio: None,
            energy_ratio_stderr: None,
            sample_mean: None,
            exact_mean: None,
            sample_sd: None,
            exact_sd: None,
            model_slice_samples: None,
            model_slice_ratio: None,
            sampler_to_model_ratio: None,
            model_slice_sd: None,
        }
    }
}

/// The heartbeat's comparison into `eval`: the share of `drawn` consistent with `given`, and
/// the samples' phase shares against the exact `phases` (with their total variation).
fn compare_phases(
    eval: &mut ConditionalEvaluation,
    beat: &Heartbeat,
    phases: &[f64],
    given: &Conditioning,
    drawn: &[f32],
) {
    let (consistent, fractions) = phase_shares(beat, given, drawn);
    eval.valid_consistent_fraction = Some(consistent);
    eval.total_variation = Some(total_variation(&fractions, phases));
    eval.phase_fractions = Some(fractions);
    eval.exact_phases = Some(phases.to_vec());
}

/// The Swiss roll's mean and standard deviation per coordinate into `eval`: of the samples
/// `drawn`, and of the exact conditional (its mean, and the spread of `exact_draws`).
fn record_moments(
    eval: &mut ConditionalEvaluation,
    drawn: &[f32],
    exact_draws: &[f32],
    post: &RollPosterior,
) {
    let (mean, sd) = moments(drawn, 2);
    eval.sample_mean = Some(mean);
    eval.sample_sd = Some(sd);
    eval.exact_mean = Some(post.mean().to_vec());
    eval.exact_sd = Some(moments(exact_draws, 2).1);
}

/// How a conditional evaluation draws its samples: `n` at a time, `particles` chains together.
struct Draws<'a, N: ReverseNetwork> {
    bound: &'a crate::Diffusion,
    network: &'a N,
    given: &'a Conditioning,
    n: usize,
    particles: usize,
    device: &'a Device,
}

impl<N: ReverseNetwork> Draws<'_, N> {
    fn conditioned(&self, rng: &mut Rng) -> Result<Vec<f32>, ConditionalError> {
        let Self {
            bound,
            network,
            given,
            n,
            particles,
            device,
        } = self;
        Ok(bound.sample_given(*network, *n, given, rng, device, *particles)?)
    }
}

/// The Swiss roll's energy distance over its floor: `repeats` sets of samples (the first is
/// `drawn`) each against its own exact draws, the floor over [`FLOOR_PAIRS`] pairs of exact
/// sets; returns the floor's mean (for sets of up to [`ENERGY_POINTS`]).
#[allow(clippy::too_many_arguments)]
fn energy_over_floor<N: ReverseNetwork>(
    eval: &mut ConditionalEvaluation,
    exact: &Exact,
    draws: &Draws<'_, N>,
    drawn: &[f32],
    repeats: usize,
    seed: u64,
    exact_a: &mut Rng,
    rng: &mut Rng,
) -> Result<f64, ConditionalError> {
    let (d, m) = (2, draws.n.min(ENERGY_POINTS));
    let repeats = repeats.max(1);
    let mut distances = Vec::with_capacity(repeats);
    for r in 0..repeats {
        let more;
        let ours = if r == 0 {
            &drawn[..m * d]
        } else {
            more = draws.conditioned(rng)?;
            &more[..m * d]
        };
        let truth = exact.sample(m, exact_a);
        distances.push(diffusion_core::energy_distance(ours, &truth, d));
    }
    let mut exact_b = diffusion_data::rng(seed, streams::METRIC_B);
    let floor: Vec<f64> = (0..FLOOR_PAIRS)
        .map(|_| {
            let a = exact.sample(m, &mut exact_b);
            let b = exact.sample(m, &mut exact_b);
            diffusion_core::energy_distance(&a, &b, d)
        })
        .collect();
    let ed = MeanStderr::of(&distances).expect("at least one set");
    let fl = MeanStderr::of(&floor).expect("pairs");
    let ratio = ed.mean / fl.mean;
    eval.repeats = Some(repeats);
    eval.energy_distance = Some(ed.mean);
    eval.energy_distance_stderr = Some(ed.stderr);
    eval.energy_distance_floor = Some(fl.mean);
    eval.energy_distance_floor_sd = Some(fl.stderr * (FLOOR_PAIRS as f64).sqrt());
    eval.energy_ratio = Some(ratio);
    eval.energy_ratio_stderr =
        Some(ratio * ((ed.stderr / ed.mean).powi(2) + (fl.stderr / fl.mean).powi(2)).sqrt());
    Ok(fl.mean)
}

/// With known values only: the model's own conditional as the unconditioned samples (of
/// `count`) within [`SLICE_HALF_WIDTH`] of every known value, against exact draws and against
/// `ours` (up to [`ENERGY_POINTS`] conditional samples), over `floor` (the mean for two sets of
/// `ours`' size) scaled to the sets' sizes as 1/a + 1/b.
#[allow(clippy::too_many_arguments)]
fn compare_with_model_slice<N: ReverseNetwork>(
    eval: &mut ConditionalEvaluation,
    exact: &Exact,
    draws: &Draws<'_, N>,
    ours: &[f32],
    floor: f64,
    count: usize,
    rng: &mut Rng,
    exact_a: &mut Rng,
) {
    let d = 2;
    let cells: Vec<Cell> = (0..d).map(|i| draws.given.cell(0, i)).collect();
    let known: Vec<(usize, f32)> = cells
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Cell::Known(v) => Some((i, *v)),
            _ => None,
        })
        .collect();
    if known.is_empty() || cells.iter().any(|c| matches!(c, Cell::Observed(..))) {
        return;
    }
    let free = draws
        .bound
        .sample(draws.network, count, rng, draws.device, draws.particles);
    let mut slice: Vec<f32> = Vec::new();
    for row in free.chunks_exact(d) {
        if known
            .iter()
            .all(|&(i, v)| (row[i] - v).abs() <= SLICE_HALF_WIDTH)
        {
            let mut row = row.to_vec();
            known.iter().for_each(|&(i, v)| row[i] = v);
            slice.extend(row);
        }
    }
    let k = slice.len() / d;
    eval.model_slice_samples = Some(k);
    if k == 0 {
        return;
    }
    let (m, j) = (ours.len() / d, k.min(ours.len() / d));
    let s = &slice[..j * d];
    let truth = exact.sample(j, exact_a);
    let floor_of =
        |a: usize, b: usize| floor * (1.0 / a as f64 + 1.0 / b as f64) / (2.0 / m as f64);
    eval.model_slice_ratio = Some(diffusion_core::energy_distance(s, &truth, d) / floor_of(j, j));
    eval.sampler_to_model_ratio =
        Some(diffusion_core::energy_distance(ours, s, d) / floor_of(m, j));
    eval.model_slice_sd = Some(moments(&slice, d).1);
}

/// Each coordinate's mean and standard deviation over the rows of `x` (`[n, d]`).
fn moments(x: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / d).max(1) as f64;
    let mean: Vec<f64> = (0..d)
        .map(|i| x.iter().skip(i).step_by(d).map(|&v| v as f64).sum::<f64>() / n)
        .collect();
    let sd = (0..d)
        .map(|i| {
            let ss: f64 = x
                .iter()
                .skip(i)
                .step_by(d)
                .map(|&v| (v as f64 - mean[i]).powi(2))
                .sum();
            (ss / n).sqrt()
        })
        .collect();
    (mean, sd)
}

/// The share of valid sequences agreeing with every known bit, and each phase's share of all
/// samples.
fn phase_shares(beat: &Heartbeat, given: &Conditioning, drawn: &[f32]) -> (f64, Vec<f64>) {
    let mut counts = vec![0usize; beat.period()];
    let mut consistent = 0usize;
    let rows = drawn.chunks_exact(beat.length());
    let n = rows.len();
    for row in rows {
        if let Some(p) = beat.phase_of(row) {
            counts[p] += 1;
            let agrees = (0..beat.length()).all(|i| match given.cell(0, i) {
                Cell::Known(v) => (row[i] >= 0.5) == (v >= 0.5),
                _ => true,
            });
            consistent += agrees as usize;
        }
    }
    let fractions = counts.iter().map(|&c| c as f64 / n.max(1) as f64).collect();
    (consistent as f64 / n.max(1) as f64, fractions)
}

/// ½ Σ |f − p| over the phases plus ½ the invalid share (whose exact probability is 0).
fn total_variation(fractions: &[f64], exact: &[f64]) -> f64 {
    let invalid = 1.0 - fractions.iter().sum::<f64>();
    0.5 * (fractions
        .iter()
        .zip(exact)
        .map(|(f, p)| (f - p).abs())
        .sum::<f64>()
        + invalid.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::condition::{Condition, ConditionMode, Variable};

    #[test]
    fn total_variation_counts_invalid_samples() {
        // a perfect match
        assert!(total_variation(&[0.5, 0.5], &[0.5, 0.5]).abs() < 1e-15);
        // 10 % invalid, the rest right in proportion: 0.5 (0.05 + 0.05 + 0.1)
        assert!((total_variation(&[0.45, 0.45], &[0.5, 0.5]) - 0.1).abs() < 1e-12);
        // all on the wrong phase
        assert!((total_variation(&[0.0, 1.0], &[1.0, 0.0]) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn exact_heartbeat_draws_follow_the_phase_posterior() {
        let data = DataConfig::Heartbeat {
            length: 20,
            period: 5,
        };
        let c = Condition::new().known(0, 0.0).known(6, 0.0);
        let given = Conditioning::new(&[c], 20, Variable::Binary, ConditionMode::Constant).unwrap();
        let exact = Exact::of(&data, &given).unwrap();
        let draws = exact.sample(30_000, &mut diffusion_data::rng(1, 0));
        let Exact::Heartbeat { beat, phases } = &exact else {
            panic!("a heartbeat reference")
        };
        let (consistent, fractions) = phase_shares(beat, &given, &draws);
        assert_eq!(consistent, 1.0);
        // 3 sd of a share of 1/3 at n = 30,000 is 0.008
        assert!(total_variation(&fractions, phases) < 0.012, "{fractions:?}");
        assert_eq!(fractions[0], 0.0);
        assert_eq!(fractions[1], 0.0);
    }

    #[test]
    fn file_data_and_per_sample_conditions_have_no_reference() {
        let c = Condition::new().known(0, 0.5);
        let one = Conditioning::new(
            std::slice::from_ref(&c),
            2,
            Variable::Continuous,
            ConditionMode::Constant,
        )
        .unwrap();
        let file = DataConfig::File {
            path: "x.csv".into(),
            heldout_fraction: 0.1,
            test_path: None,
            standardize: None,
            dequantize: false,
            logit_alpha: None,
            binarize: None,
        };
        assert!(matches!(
            Exact::of(&file, &one),
            Err(ConditionalError::NoReference)
        ));
        let two = Conditioning::new(
            &[c.clone(), c],
            2,
            Variable::Continuous,
            ConditionMode::Constant,
        )
        .unwrap();
        let roll = DataConfig::SwissRoll { noise: 0.5 };
        assert!(matches!(
            Exact::of(&roll, &two),
            Err(ConditionalError::PerSample)
        ));
    }
}
