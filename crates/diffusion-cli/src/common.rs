//! What several commands share: reading a config, opening a trained run, writing rows, and
//! the checks on counts.

use std::path::Path;

use burn::tensor::Device;
use diffusion_data::{Array2, io};
use diffusion_models::{Network, ReverseModel, RunConfig, RunDir, RunManifest, Weights};

use diffusion_core::{Ddim, PredictionType, TimestepSpacing};
use diffusion_models::sampling::Sampler;

use crate::args::{BackendArg, Prediction, SamplerArgs, SamplerKind, Spacing, WeightsArg};

/// Reads and parses a TOML config, naming the file in any error.
pub fn read_config(path: &Path) -> Result<RunConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    RunConfig::from_toml(&text).map_err(|e| format!("config {}: {e}", path.display()))
}

/// Opens a trained run on the backend asked for: its folder, manifest and model (the weights
/// asked for; by default the moving average when the run has one).
pub fn load_run(
    path: &Path,
    backend: &BackendArg,
    weights: WeightsArg,
) -> Result<(RunDir, RunManifest, ReverseModel<Network>, Device), String> {
    let run = RunDir::open(path).map_err(|e| e.to_string())?;
    let manifest = run.manifest().map_err(|e| e.to_string())?;
    let (_, device) = backend.resolve()?;
    let weights = match weights {
        WeightsArg::Default => Weights::Default,
        WeightsArg::Raw => Weights::Raw,
        WeightsArg::Ema => Weights::Ema,
    };
    let (model, used) = run
        .load_weights(&manifest, &device, weights)
        .map_err(|e| e.to_string())?;
    if used == Weights::Ema {
        eprintln!("weights: the moving average (model_ema.bpk; --weights raw for the others)");
    }
    Ok((run, manifest, model, device))
}

/// Writes `rows` generated rows of `cols` values to `out` (.csv or .npy) and says so.
pub fn write_rows(
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
pub fn default_eval_points(steps: usize) -> usize {
    (2_000_000 / steps.saturating_sub(1).max(1)).clamp(1_000, 10_000)
}

/// Refuses a count of zero given by `-n`.
pub fn check_count(n: usize) -> Result<(), String> {
    check_at_least_one("-n", n)
}

/// Refuses a zero for the option `flag`.
pub fn check_at_least_one(flag: &str, n: usize) -> Result<(), String> {
    if n == 0 {
        Err(format!("{flag} must be at least 1"))
    } else {
        Ok(())
    }
}

impl SamplerArgs {
    /// The library's [`Sampler`] these options describe.
    pub fn sampler(&self) -> Result<Sampler, String> {
        let steps = || {
            self.sample_steps
                .ok_or_else(|| "--sampler respaced and ddim need --sample-steps K".to_string())
        };
        Ok(match self.sampler {
            SamplerKind::Ancestral => {
                if self.sample_steps.is_some() {
                    return Err("--sample-steps needs --sampler respaced or ddim".into());
                }
                Sampler::Ancestral
            }
            SamplerKind::Respaced => Sampler::Respaced(steps()?),
            SamplerKind::Ddim => Sampler::Ddim(Ddim {
                alphas_cumprod: Vec::new(),
                steps: steps()?,
                eta: self.eta,
                timestep_spacing: match self.timestep_spacing {
                    Spacing::Leading => TimestepSpacing::Leading,
                    Spacing::Trailing => TimestepSpacing::Trailing,
                    Spacing::Linspace => TimestepSpacing::Linspace,
                },
                clip_sample: self.clip_sample,
                clip_sample_range: self.clip_sample_range,
                set_alpha_to_one: self.set_alpha_to_one,
                prediction_type: match self.prediction_type {
                    Prediction::Epsilon => PredictionType::Epsilon,
                    Prediction::Sample => PredictionType::Sample,
                },
            }),
        })
    }
}
