//! `diffusion plot`: the presentation's pictures of a run, as PNG and SVG.
//!
//! `cmd_plot` checks the request and hands each `--what` to its own method of `Plot`: the
//! scatter and arrow pictures of points in `points`, grey images in `images`, binary rasters in
//! `rasters`, conditional samples in `conditional`, and line charts in `curves`.

mod conditional;
mod curves;
mod images;
mod points;
mod rasters;

use std::path::PathBuf;

use burn::tensor::Device;
use diffusion_models::bound::Diffusion;
use diffusion_models::evaluate::heldout_points;
use diffusion_models::{Network, ReverseModel, RunDir, RunManifest};
use diffusion_plot::PlotError;

use crate::args::{PlotArgs, What};
use crate::common::load_run;

/// The random stream of the pictures' draws.
const PLOT_STREAM: u64 = 5;

impl What {
    /// The picture's `--what` name, which is also its files' stem.
    fn name(self) -> &'static str {
        match self {
            Self::Trajectory => "trajectory",
            Self::Drift => "drift",
            Self::Loss => "loss",
            Self::Samples => "samples",
            Self::Noising => "noising",
            Self::Conditional => "conditional",
            Self::SamplingSteps => "sampling-steps",
            Self::Inpainting => "inpainting",
            Self::Denoising => "denoising",
        }
    }
}

/// The pictures that fit a run.
fn fitting(manifest: &RunManifest, bound: &Diffusion) -> Vec<What> {
    match bound {
        Diffusion::Gaussian(_) if manifest.data_dim == 2 => {
            vec![What::Trajectory, What::Drift, What::Loss]
        }
        Diffusion::Gaussian(_) if manifest.image.is_some_and(|s| s.channels == 1) => {
            vec![What::Samples, What::Trajectory, What::Loss]
        }
        Diffusion::Gaussian(_) => vec![What::Samples, What::Loss],
        Diffusion::Binomial(_) => vec![What::Samples, What::Noising, What::Loss],
    }
}

/// The default steps t of the panels: 0, T/10, ..., T, without repeats.
fn default_steps(steps: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=10).map(|k| k * steps / 10).collect();
    v.dedup();
    v
}

/// Rows of two values as points.
fn pairs(values: &[f32]) -> Vec<[f32; 2]> {
    values.chunks_exact(2).map(|p| [p[0], p[1]]).collect()
}

/// Rows of `d` values as bits, a value of at least 0.5 a one.
fn bit_rows(values: &[f32], d: usize) -> Vec<Vec<bool>> {
    values
        .chunks_exact(d)
        .map(|r| r.iter().map(|&v| v >= 0.5).collect())
        .collect()
}

/// What every picture of one `diffusion plot` shares: the request, the loaded run and its
/// model, the steps t to show, the one random stream of the draws, and the files written so far.
struct Plot {
    a: PlotArgs,
    run: RunDir,
    manifest: RunManifest,
    model: ReverseModel<Network>,
    device: Device,
    bound: Diffusion,
    /// The number of steps T of the run's chain.
    steps_t: usize,
    /// The steps t of the trajectory and noising panels.
    steps: Vec<usize>,
    /// The run folder's name, which starts the pictures' titles.
    name: String,
    /// The values in one row of data.
    d: usize,
    /// The width and height of the grey images the rows are drawn as, if they are.
    image: Option<(usize, usize)>,
    rng: diffusion_data::Rng,
    written: Vec<PathBuf>,
}

/// Runs `diffusion plot`.
pub fn cmd_plot(a: PlotArgs) -> Result<(), String> {
    let (mut plot, what) = Plot::open(a)?;
    for w in what {
        plot.draw(w)?;
    }
    for f in &plot.written {
        println!("{}", f.display());
    }
    Ok(())
}

impl Plot {
    /// Loads the first run, checks the pictures asked for (or picks those that fit) and the
    /// steps, and creates the output folder.
    fn open(a: PlotArgs) -> Result<(Self, Vec<What>), String> {
        if a.n == 0 || a.rows == 0 {
            return Err("-n and --rows must be at least 1".into());
        }
        let (run, manifest, model, device) = load_run(&a.run[0], &a.backend, a.weights)?;
        let bound = manifest.bound_of(&model).map_err(|e| e.to_string())?;
        let steps_t = bound.steps();
        let what = chosen(&a, &manifest, &bound, &run)?;
        let steps = if a.steps.is_empty() {
            default_steps(steps_t)
        } else {
            a.steps.clone()
        };
        if let Some(t) = steps.iter().find(|&&t| t > steps_t) {
            return Err(format!("--steps {t} is beyond T = {steps_t}"));
        }
        std::fs::create_dir_all(&a.out)
            .map_err(|e| format!("cannot create {}: {e}", a.out.display()))?;
        let name = run
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let d = manifest.data_dim;
        let rng = diffusion_data::rng(a.seed, PLOT_STREAM);
        // grey images of the run's own shape unless --image says otherwise
        let image = a.image.or(manifest
            .image
            .filter(|s| s.channels == 1)
            .map(|s| (s.width, s.height)));
        if let Some((w, h)) = image
            && w * h != d
        {
            return Err(format!(
                "--image {w}x{h} has {} pixels, the run's rows have {d} values",
                w * h
            ));
        }
        let plot = Self {
            a,
            run,
            manifest,
            model,
            device,
            bound,
            steps_t,
            steps,
            name,
            d,
            image,
            rng,
            written: Vec::new(),
        };
        Ok((plot, what))
    }

    /// Draws one picture, the file names starting with its `--what` name.
    fn draw(&mut self, w: What) -> Result<(), String> {
        let stem = self.a.out.join(w.name());
        match w {
            What::Trajectory if self.manifest.image.is_some() && self.image.is_some() => {
                self.image_trajectory(&stem)
            }
            What::Trajectory => self.point_trajectory(&stem),
            What::Drift => self.drift(&stem),
            What::Loss => self.loss(&stem),
            What::Samples if self.image.is_some() => self.image_samples(&stem),
            What::Samples if matches!(self.bound, Diffusion::Gaussian(_)) => {
                self.point_samples(&stem)
            }
            What::Samples => self.raster_samples(&stem),
            What::Conditional => self.conditional(&stem),
            What::Inpainting | What::Denoising => self.completions(w, &stem),
            What::SamplingSteps => self.sampling_steps_charts(&stem),
            What::Noising => self.noising(&stem),
        }
    }

    /// Notes the files one picture wrote, or turns its failure into the command's error.
    fn keep(&mut self, files: Result<Vec<PathBuf>, PlotError>) -> Result<(), String> {
        files
            .map(|f| self.written.extend(f))
            .map_err(|e| e.to_string())
    }

    /// `n` held-out points of the run, in the space the model diffuses.
    fn heldout(&self, n: usize) -> Result<Vec<f32>, String> {
        heldout_points(&self.manifest, &self.run, n).map_err(|e| e.to_string())
    }
}

/// The pictures to draw: those asked for, or every one that fits the run; an error names a
/// picture that does not fit, or a conditional picture without its condition.
fn chosen(
    a: &PlotArgs,
    manifest: &RunManifest,
    bound: &Diffusion,
    run: &RunDir,
) -> Result<Vec<What>, String> {
    let fits = fitting(manifest, bound);
    let what = if a.what.is_empty() {
        fits.clone()
    } else {
        a.what.clone()
    };
    // conditional samples are drawn when asked for, for the runs whose pictures they fit
    let mut allowed = fits;
    if manifest.data_dim == 2 || matches!(bound, Diffusion::Binomial(_)) {
        allowed.push(What::Conditional);
    }
    allowed.push(What::SamplingSteps);
    if manifest.image.is_some() {
        allowed.extend([What::Inpainting, What::Denoising]);
    }
    if what.contains(&What::Conditional) && !a.condition.is_set() {
        return Err(
            "--what conditional needs a condition: --known, --observe, or their files".into(),
        );
    }
    if let Some(w) = what.iter().find(|w| !allowed.contains(w)) {
        let names: Vec<&str> = allowed.iter().map(|w| w.name()).collect();
        return Err(format!(
            "--what {} does not fit {} (it can draw: {})",
            w.name(),
            run.path().display(),
            names.join(", ")
        ));
    }
    Ok(what)
}
