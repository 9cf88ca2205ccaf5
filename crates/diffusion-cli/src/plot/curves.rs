//! Line charts: training loss against steps, and sample quality and the bound against the
//! number of sampling steps.

use std::path::Path;

use burn::tensor::Device;
use diffusion_core::{Ddim, PredictionType, TimestepSpacing};
use diffusion_models::bound::Diffusion;
use diffusion_models::config::LossKind;
use diffusion_models::evaluate::{BoundEstimate, evaluate_with};
use diffusion_models::sampling::Sampler;
use diffusion_models::{Network, ReverseModel, RunDir, RunManifest};
use diffusion_plot::{LineChart, Series, save};

use super::Plot;

impl Plot {
    /// `--what loss`: the training loss of every `--run` against its steps, one line each.
    pub(super) fn loss(&mut self, stem: &Path) -> Result<(), String> {
        let series = self
            .a
            .run
            .iter()
            .map(|r| loss_series(r))
            .collect::<Result<Vec<_>, _>>()?;
        let files = save(
            &LineChart {
                title: "Training loss: -K by Monte Carlo, mean over each logging interval".into(),
                x_label: "step".into(),
                y_label: "loss (bits per point)".into(),
                series,
            },
            stem,
        );
        self.keep(files)
    }

    /// `--what sampling-steps`: sample quality against the sampling steps K (`stem`), and the
    /// respaced chain's bound K against them (`sampling-steps-bound`).
    pub(super) fn sampling_steps_charts(&mut self, stem: &Path) -> Result<(), String> {
        let (quality, bound_k) = sampling_steps(
            &self.manifest,
            &self.run,
            &self.model,
            &self.device,
            self.a.n,
            self.a.seed,
        )?;
        let binary = matches!(self.bound, Diffusion::Binomial(_));
        let y = if binary {
            "share of valid samples"
        } else {
            "energy distance to fresh or held-out data"
        };
        let (name, steps_t) = (&self.name, self.steps_t);
        let files = save(
            &LineChart {
                title: format!("{name}: sample quality against sampling steps K (T = {steps_t})"),
                x_label: "sampling steps K".into(),
                y_label: y.into(),
                series: quality,
            },
            stem,
        );
        self.keep(files)?;
        let name = &self.name;
        let files = save(
            &LineChart {
                title: format!("{name}: the bound K of the respaced chain against its steps"),
                x_label: "sampling steps K".into(),
                y_label: "K (bits per point)".into(),
                series: vec![bound_k],
            },
            &self.a.out.join("sampling-steps-bound"),
        );
        self.keep(files)
    }
}

/// Reads `metrics.csv` of a run as (step, loss) points.
fn loss_series(run: &Path) -> Result<Series, String> {
    let path = run.join(diffusion_models::metrics::FILE);
    let points: Vec<(f64, f64)> = diffusion_models::metrics::read(&path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| (r.step as f64, r.loss_bits))
        .collect();
    if points.is_empty() {
        return Err(format!("{} has no rows yet", path.display()));
    }
    let mut label = run
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.display().to_string());
    let loss = RunDir::open(run)
        .and_then(|r| r.manifest())
        .map(|m| m.config.train.loss);
    match loss {
        Ok(LossKind::Mse) => label.push_str(" (noise MSE, not bits)"),
        Ok(LossKind::Hybrid) => label.push_str(" (noise MSE + weighted bound, not bits)"),
        _ => {}
    }
    Ok(Series { label, points })
}

/// The step counts K the sampling-steps picture visits: 10, 20, 50, 100, 200, 500, ... below T,
/// then T.
fn step_counts(steps: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = [1, 2, 5]
        .iter()
        .flat_map(|&m| (1..7).map(move |e| m * 10usize.pow(e)))
        .filter(|&k| k < steps)
        .collect();
    ks.sort_unstable();
    ks.push(steps);
    ks
}

/// Sample quality of respaced and DDIM chains (and the data floor) and the respaced chain's K
/// against the number of steps, each point one `evaluate_with` on `n` samples.
fn sampling_steps(
    manifest: &RunManifest,
    run: &RunDir,
    model: &ReverseModel<Network>,
    device: &Device,
    n: usize,
    seed: u64,
) -> Result<(Vec<Series>, Series), String> {
    let bound = manifest.bound_of(model).map_err(|e| e.to_string())?;
    let gaussian = matches!(bound, Diffusion::Gaussian(_));
    let points = 1000;
    let mut respaced = Vec::new();
    let mut ddim = Vec::new();
    let mut floor = Vec::new();
    let mut ks = Vec::new();
    for k in step_counts(bound.steps()) {
        let eval = |sampler| {
            evaluate_with(
                manifest,
                run,
                model,
                device,
                points,
                n,
                seed,
                &sampler,
                BoundEstimate::default_for(manifest),
            )
            .map_err(|e| e.to_string())
        };
        let e = eval(Sampler::Respaced(k))?;
        eprintln!("sampling steps {k}: respaced K = {:+.4} bits", e.k_bits);
        ks.push((k as f64, e.k_bits));
        match (e.energy_distance, e.valid_fraction) {
            (Some(ed), _) => {
                respaced.push((k as f64, ed));
                if let Some(f) = e.energy_distance_floor {
                    floor.push((k as f64, f));
                }
            }
            (None, Some(v)) => respaced.push((k as f64, v)),
            _ => {}
        }
        if gaussian {
            let options = Ddim {
                alphas_cumprod: Vec::new(),
                steps: k,
                eta: 0.0,
                timestep_spacing: TimestepSpacing::Leading,
                clip_sample: false,
                clip_sample_range: 1.0,
                set_alpha_to_one: true,
                prediction_type: PredictionType::Epsilon,
            };
            if let Some(ed) = eval(Sampler::Ddim(options))?.energy_distance {
                ddim.push((k as f64, ed));
            }
        }
    }
    let series = |label: &str, points: Vec<(f64, f64)>| Series {
        label: label.into(),
        points,
    };
    let mut quality = vec![series("respaced", respaced)];
    if !ddim.is_empty() {
        quality.push(series("DDIM, eta = 0", ddim));
    }
    if !floor.is_empty() {
        quality.push(series("two data sets (floor)", floor));
    }
    Ok((quality, series("respaced chain's K", ks)))
}
