//! Simpler models than diffusion fitted on a file run's training rows and scored on its held-out
//! rows (the split the run was trained and evaluated on), in bits per point in the data's own
//! units, to set beside `evaluate`'s K: independent bits and a mixture of Bernoullis for binary
//! data, independent per-coordinate histograms for integer data (a model of the discrete
//! values, which a dequantised run's K bounds from below).

use diffusion_core::MeanStderr;
use diffusion_data::baselines::{BernoulliMixture, IndependentBernoulli, PixelHistogram};
use serde::{Deserialize, Serialize};

use crate::config::{DataConfig, ProcessKind};
use crate::run::{RunDir, RunError, RunManifest};

/// One baseline's held-out log-likelihood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// What the model is.
    pub name: String,
    /// Mean log2-likelihood per held-out point (comparable to K).
    pub bits: f64,
    /// Its standard error over points.
    pub stderr_bits: f64,
    /// `bits / d`.
    pub bits_per_dim: f64,
}

/// The baselines of a run, on its held-out rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// Training rows the baselines were fitted on.
    pub train_rows: usize,
    /// Held-out rows they were scored on.
    pub heldout_rows: usize,
    /// The data dimension d.
    pub dim: usize,
    /// One entry per baseline.
    pub baselines: Vec<Baseline>,
}

/// Fits and scores the baselines that fit a file run: for binomial runs independent Bernoullis
/// and a mixture of `components` Bernoulli products (`iterations` EM steps, seeded by the run's
/// seed); for Gaussian runs whose rows are integers, one histogram per coordinate. Generator
/// runs have exact entropies instead, and are refused.
pub fn baselines(
    manifest: &RunManifest,
    run: &RunDir,
    components: usize,
    iterations: usize,
) -> Result<Baselines, RunError> {
    if !matches!(manifest.config.data, DataConfig::File { .. }) {
        return Err(RunError::Invalid(
            "baselines are for runs on file data; generated data have their exact entropy in \
             `evaluate`"
                .into(),
        ));
    }
    let (train, held) = crate::setup::file_rows(manifest, run)?;
    let d = manifest.data_dim;
    let score = |name: String, f: &dyn Fn(&[f32]) -> f64| {
        let values: Vec<f64> = (0..held.rows).map(|i| f(held.row(i))).collect();
        let m = MeanStderr::of(&values).expect("a held-out split has rows");
        Baseline {
            name,
            bits: m.mean,
            stderr_bits: m.stderr,
            bits_per_dim: m.mean / d as f64,
        }
    };
    let mut out = Vec::new();
    match manifest.config.diffusion.process {
        ProcessKind::Binomial => {
            let independent = IndependentBernoulli::fit(&train);
            out.push(score(
                "independent bits (one Bernoulli per bit)".into(),
                &|r| independent.log_likelihood_bits(r),
            ));
            let mixture =
                BernoulliMixture::fit(&train, components, iterations, manifest.config.train.seed)
                    .map_err(|e| RunError::Invalid(e.to_string()))?;
            out.push(score(
                format!("mixture of {components} Bernoulli products (EM, {iterations} steps)"),
                &|r| mixture.log_likelihood_bits(r),
            ));
        }
        ProcessKind::Gaussian => {
            let top = diffusion_data::baselines::integer_range(&train)
                .zip(diffusion_data::baselines::integer_range(&held))
                .map(|(a, b)| a.max(b));
            match top {
                Some(top) => {
                    let histogram = PixelHistogram::fit(&train, top)
                        .map_err(|e| RunError::Invalid(e.to_string()))?;
                    out.push(score(
                        format!("independent coordinates (a histogram of 0..={top} each)"),
                        &|r| {
                            histogram
                                .log_likelihood_bits(r)
                                .unwrap_or(f64::NEG_INFINITY)
                        },
                    ));
                }
                None => {
                    return Err(RunError::Invalid(
                        "baselines for continuous data need integer values (the histogram \
                         baseline); this run's L_null, in `evaluate`, is its Gaussian null model"
                            .into(),
                    ));
                }
            }
        }
    }
    Ok(Baselines {
        train_rows: train.rows,
        heldout_rows: held.rows,
        dim: d,
        baselines: out,
    })
}
