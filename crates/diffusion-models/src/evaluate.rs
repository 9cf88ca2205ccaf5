//! Evaluation of a trained run: the full-sum bound K on held-out points, with L_null and the
//! data's own entropy beside it, all in bits per point.

use burn::tensor::Device;
use diffusion_core::MeanStderr;
use diffusion_data::{Heartbeat, SwissRoll};
use serde::{Deserialize, Serialize};

use crate::config::DataConfig;
use crate::network::{ReverseModel, ReverseNetwork};
use crate::run::{RunDir, RunError, RunManifest};
use crate::training::{TrainingData, streams};

/// The most samples (and data points) the energy distance compares: O(n^2) pairs.
pub const ENERGY_POINTS: usize = 4_000;

/// Rows per evaluation chunk (bounds memory whatever n and T are).
pub const CHUNK_ROWS: usize = 16_384;

/// Reverse chains run side by side when sampling: bounds memory whatever n is, and keeps a
/// step's activations in cache (measured with the presentation's model on 2 cores, 100,000
/// points through T = 200: 770k point-steps/s in chunks of 65,536 rows, 968k at 16,384,
/// 1,074k at 4,096, 928k at 2,048).
pub const SAMPLE_CHUNK_ROWS: usize = 4_096;

/// The result of `diffusion evaluate`, in bits per point (per sequence for binary data).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// The bound K (mean over held-out points of the full sum over t).
    pub k_bits: f64,
    /// Its standard error over points.
    pub k_stderr_bits: f64,
    /// L_null: the log-likelihood of the null model, N(0, I) (-d/2 log2(2 pi e)) or i.i.d.
    /// Bernoulli(pi) bits (averaged over the held-out points).
    pub l_null_bits: f64,
    /// K - L_null.
    pub k_minus_l_null_bits: f64,
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
}

/// The first `n` held-out points of a run (all of them, if the held-out file has fewer).
pub fn heldout_points(
    manifest: &RunManifest,
    run: &RunDir,
    n: usize,
) -> Result<Vec<f32>, RunError> {
    let rng = diffusion_data::rng(manifest.config.train.seed, streams::HELDOUT);
    let generator =
        TrainingData::generator(&manifest.config.data, rng).map_err(|e| RunError::Corrupt {
            path: run.file("config.json").display().to_string(),
            message: e.to_string(),
        })?;
    if let Some((mut stream, _)) = generator {
        return Ok(stream.next_batch(n));
    }
    // File data: the held-out rows the run kept.
    let p = run.file("heldout.npy");
    let a = diffusion_data::io::read(&p).map_err(|e| RunError::Corrupt {
        path: p.display().to_string(),
        message: e.to_string(),
    })?;
    if a.cols != manifest.data_dim {
        return Err(RunError::Corrupt {
            path: p.display().to_string(),
            message: format!("{} columns, the run has {}", a.cols, manifest.data_dim),
        });
    }
    let rows = n.min(a.rows);
    Ok(a.data[..rows * a.cols].to_vec())
}

/// Evaluates `model` on the run's held-out points: K from the full sum over t = 2..T (one draw of
/// x_t per point and step, seeded by `seed`), L_null, and -H(data) for generator data. For
/// heartbeat data it also draws `samples` sequences and reports the valid share and the phases.
pub fn evaluate<N: ReverseNetwork>(
    manifest: &RunManifest,
    run: &RunDir,
    model: &ReverseModel<N>,
    device: &Device,
    n: usize,
    samples: usize,
    seed: u64,
) -> Result<Evaluation, RunError> {
    let bound = manifest.bound_of(model).map_err(|e| RunError::Corrupt {
        path: run.file("config.json").display().to_string(),
        message: e.to_string(),
    })?;
    let points = heldout_points(manifest, run, n)?;
    let mut rng = diffusion_data::rng(seed, streams::EVAL_NOISE);
    let per_point =
        bound.bound_bits_per_point(&model.network, &points, &mut rng, device, CHUNK_ROWS);
    let k = MeanStderr::of(&per_point).ok_or_else(|| RunError::Corrupt {
        path: run.path().display().to_string(),
        message: "no held-out points".into(),
    })?;
    let d = bound.dim();
    let l_null = points
        .chunks_exact(d)
        .map(|row| bound.l_null_bits(row))
        .sum::<f64>()
        / k.n as f64;
    let (mut valid_fraction, mut phase_fractions, mut sample_count) = (None, None, None);
    let entropy = match &manifest.config.data {
        DataConfig::SwissRoll { noise } => SwissRoll::new(*noise)
            .ok()
            .map(|r| r.entropy_bits(k.n.clamp(2_000, 20_000), seed)),
        DataConfig::Heartbeat { length, period } => {
            let beat = Heartbeat::new(*length, *period).ok();
            if let Some(beat) = beat.filter(|_| samples > 0) {
                let mut rng = diffusion_data::rng(seed, streams::SAMPLE);
                let drawn =
                    bound.sample(&model.network, samples, &mut rng, device, SAMPLE_CHUNK_ROWS);
                let mut counts = vec![0usize; beat.period()];
                for row in drawn.chunks_exact(d) {
                    if let Some(p) = beat.phase_of(row) {
                        counts[p] += 1;
                    }
                }
                let valid: usize = counts.iter().sum();
                valid_fraction = Some(valid as f64 / samples as f64);
                phase_fractions = Some(
                    counts
                        .iter()
                        .map(|&c| c as f64 / valid.max(1) as f64)
                        .collect(),
                );
                sample_count = Some(samples);
            }
            beat.map(|b| (b.entropy_bits(), 0.0))
        }
        DataConfig::File { .. } => None,
    };
    let (mut energy, mut energy_floor) = (None, None);
    if let (crate::bound::Diffusion::Gaussian(_), true) = (&bound, samples > 0) {
        let m = samples.min(ENERGY_POINTS);
        let mut rng = diffusion_data::rng(seed, streams::SAMPLE);
        let drawn = bound.sample(&model.network, m, &mut rng, device, SAMPLE_CHUNK_ROWS);
        match &manifest.config.data {
            DataConfig::SwissRoll { noise } => {
                if let Ok(roll) = SwissRoll::new(*noise) {
                    let fresh = |stream| {
                        roll.stream_with(diffusion_data::rng(seed, stream))
                            .next_batch(m)
                    };
                    let (a, b) = (fresh(streams::METRIC_A), fresh(streams::METRIC_B));
                    energy = Some(diffusion_core::energy_distance(&drawn, &a, d));
                    energy_floor = Some(diffusion_core::energy_distance(&b, &a, d));
                }
            }
            _ => {
                let held = heldout_points(manifest, run, m)?;
                let rows = held.len() / d;
                energy = Some(diffusion_core::energy_distance(
                    &drawn[..rows * d],
                    &held,
                    d,
                ));
            }
        }
        sample_count = Some(m);
    }
    Ok(Evaluation {
        k_bits: k.mean,
        k_stderr_bits: k.stderr,
        l_null_bits: l_null,
        k_minus_l_null_bits: k.mean - l_null,
        neg_data_entropy_bits: entropy.map(|(h, _)| -h),
        neg_data_entropy_stderr_bits: entropy.map(|(_, se)| se),
        gap_bits: entropy.map(|(h, _)| -h - k.mean),
        n: k.n,
        steps_t: bound.steps(),
        valid_fraction,
        phase_fractions,
        samples: sample_count,
        energy_distance: energy,
        energy_distance_floor: energy_floor,
    })
}
