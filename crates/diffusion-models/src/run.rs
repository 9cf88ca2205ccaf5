//! The run folder: what a training run leaves behind and what `evaluate` and `sample` read.
//!
//! - `config.json`: the resolved [`RunManifest`] (config after command-line overrides, data
//!   dimension), written before training starts;
//! - `model.bpk`: the trained network (Burn's burnpack record);
//! - `model_ema.bpk`: the moving average of its weights, with `train.ema_decay` (what
//!   [`RunDir::load_model`] loads when it is there; [`Weights`]);
//! - `metrics.csv`: `step,loss_bits,lr,wall_time_s` every `log_every` steps;
//! - `summary.json`: steps, wall time and throughput of the finished run;
//! - `heldout.npy`: the held-out points when training on a file split by the run's seed (none
//!   with a separate test file; the training rows are never copied: `config.json` names the
//!   files with their SHA-256, [`crate::setup::file_rows`]).
//!
//! Every file is written through a temporary file and a rename, so a crash never leaves a
//! half-written one.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use diffusion_core::{BetaSchedule, BinomialDiffusion, GaussianDiffusion};
use diffusion_data::io::write_atomic;
use diffusion_data::{DataError, ImageShape, Standardization};
use serde::{Deserialize, Serialize};

use crate::bound::Diffusion;
use crate::config::{ConfigError, LastStep, ProcessKind, RunConfig};
use crate::model::Network;
use crate::network::{ReverseModel, ReverseNetwork};
use crate::process::{BinomialBound, ClipRange, Decoder, GaussianBound};
use crate::source::DataSource;

/// The format tag of `config.json`.
pub const MANIFEST_FORMAT: &str = "diffusion-run/1";

/// The moving average of the weights, in a checkpoint and in a run folder.
pub const EMA_FILE: &str = "model_ema.bpk";

/// Why a run folder could not be made, read or continued.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The folder exists and may hold work.
    #[error("run folder {0} already exists and is not empty")]
    Exists(String),
    /// Not a run folder.
    #[error("{0} is not a run folder (no config.json)")]
    NotARun(String),
    /// A file is missing, truncated or foreign.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data file cannot be read.
    #[error("data {0}")]
    Data(DataError),
    /// The data cannot be split into training and held-out rows.
    #[error(transparent)]
    Split(DataError),
    /// A binomial run's data file holds a value other than 0 and 1.
    #[error(
        "data {path}: value {value} at row {row}, column {column} is not 0 or 1, as binomial diffusion needs"
    )]
    NotBinary {
        /// The file.
        path: String,
        /// The value.
        value: f32,
        /// Its row (0-based).
        row: usize,
        /// Its column (0-based).
        column: usize,
    },
    /// A run with the discretised decoder whose data holds a value that is not an 8-bit level.
    #[error(
        "data {path}: value {value} at row {row}, column {column} is not an integer in 0..=255, \
         as diffusion.decoder = \"discretized\" needs"
    )]
    NotEightBit {
        /// The file.
        path: String,
        /// The value.
        value: f32,
        /// Its row (0-based).
        row: usize,
        /// Its column (0-based).
        column: usize,
    },
    /// A binomial run's pi, estimated from the data, is 0 or 1.
    #[error("the data's mean activity is {0}; set diffusion.pi in (0, 1) explicitly")]
    MeanActivity(f64),
    /// A shorter chain that cannot run on this run.
    #[error(transparent)]
    Sampler(#[from] crate::sampling::SamplerError),
    /// `--weights ema` on a run trained without `train.ema_decay`.
    #[error("{path} has no averaged weights (model_ema.bpk; train with train.ema_decay)")]
    NoAverage {
        /// The run folder.
        path: String,
    },
    /// A request that does not fit this run.
    #[error("{0}")]
    Invalid(String),
    /// `resume` found nothing to continue from.
    #[error("{run} has no checkpoint to resume from (none in {folder})")]
    NoCheckpoint {
        /// The run folder.
        run: String,
        /// Its checkpoint folder.
        folder: String,
    },
}

/// Rows per device call of an image network outside training ([`RunManifest::chunk_rows`]).
pub const IMAGE_CHUNK_ROWS: usize = 256;

/// The resolved configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The configuration after command-line overrides.
    pub config: RunConfig,
    /// The data dimension d.
    pub data_dim: usize,
    /// The backend the run was trained on.
    pub backend: String,
    /// Gaussian runs on file data: how the rows were standardised (and dequantised), and the
    /// null model of the data. Absent for generator data and binomial runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardization: Option<Standardization>,
    /// Image data: the shape of each row (channel-first), which image networks and plots use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageShape>,
    /// File data: the files the rows come from (absolute paths and digests); the run folder
    /// keeps no copy of the training rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataSource>,
}

impl RunManifest {
    /// The manifest of a new run.
    pub fn new(config: RunConfig, data_dim: usize, backend: &str) -> Self {
        Self {
            format: MANIFEST_FORMAT.into(),
            config,
            data_dim,
            backend: backend.into(),
            standardization: None,
            image: None,
            source: None,
        }
    }

    /// Rows per device call for a batch of `base` rows of this run's data: `base`, but
    /// [`IMAGE_CHUNK_ROWS`] for images (a convolutional network's activations are some hundred
    /// times a row's size).
    pub fn chunk_rows(&self, base: usize) -> usize {
        match self.image {
            Some(_) => base.min(IMAGE_CHUNK_ROWS),
            None => base,
        }
    }

    /// This manifest with the image shape of its rows.
    pub fn with_image(mut self, image: Option<ImageShape>) -> Self {
        self.image = image;
        self
    }

    /// Maps rows the model drew (row-major, `data_dim` columns) back to the data's own units:
    /// undoes the standardisation of file data; generator data are unchanged.
    pub fn to_data_units(&self, rows: &mut [f32]) {
        if let Some(s) = &self.standardization {
            s.invert(rows);
        }
    }

    /// Image runs on dequantised data: rows in the data's own units (k + u for pixel value k)
    /// to the pixel values k, floored and clamped to 0..=255; runs with the discretised
    /// decoder: each value to the level whose bin holds it (rounded, clamped), which makes a
    /// draw of the decoder's Gaussian a draw of its discrete distribution. Other runs are
    /// unchanged.
    pub fn to_pixels(&self, rows: &mut [f32]) {
        let dequantized = self.standardization.as_ref().is_some_and(|s| s.dequantize);
        if self.config.diffusion.decoder == LastStep::Discretized {
            for v in rows {
                *v = v.round().clamp(0.0, 255.0);
            }
        } else if self.image.is_some() && dequantized {
            for v in rows {
                *v = v.floor().clamp(0.0, 255.0);
            }
        }
    }

    /// Maps rows in the data's own units into the space the model diffuses (the inverse of
    /// [`RunManifest::to_data_units`], without dequantising).
    pub fn to_model_units(&self, rows: &mut [f32]) {
        if let Some(s) = &self.standardization {
            s.apply(rows);
        }
    }

    /// This manifest with the standardisation of its file data.
    pub fn with_standardization(mut self, standardization: Option<Standardization>) -> Self {
        self.standardization = standardization;
        self
    }

    /// The diffusion and parametrization this run describes. A binomial run's `pi` must be
    /// resolved (set) by then.
    pub fn bound(&self) -> Result<Diffusion, ConfigError> {
        let d = &self.config.diffusion;
        match d.process {
            ProcessKind::Gaussian => Ok(Diffusion::Gaussian(GaussianBound {
                diffusion: GaussianDiffusion::new(d.schedule.betas(d.steps)?, self.data_dim)?,
                parametrization: d.parametrization,
                clip: self.clip_range()?,
                decoder: self.decoder(),
                respaced: None,
            })),
            ProcessKind::Binomial => {
                let pi = d.pi.ok_or(ConfigError::UnresolvedPi)?;
                Ok(Diffusion::Binomial(BinomialBound {
                    diffusion: BinomialDiffusion::new(
                        d.schedule.raw_betas(d.steps)?,
                        pi,
                        self.data_dim,
                    )?,
                    parametrization: d.parametrization,
                    respaced: None,
                }))
            }
        }
    }

    /// The bins of `diffusion.decoder = "discretized"`: the 8-bit levels 0..=255 through the
    /// run's standardisation (a map x' = (x - m) / s per coordinate).
    fn decoder(&self) -> Option<Decoder> {
        if self.config.diffusion.decoder != LastStep::Discretized {
            return None;
        }
        let d = self.data_dim;
        let level = |v: f32| {
            let mut row = vec![v; d];
            self.to_model_units(&mut row);
            row
        };
        let (lowest, one, highest) = (level(0.0), level(1.0), level(255.0));
        let half = one
            .iter()
            .zip(&lowest)
            .map(|(a, b)| 0.5 * (a - b))
            .collect();
        Some(Decoder {
            lowest,
            highest,
            half,
        })
    }

    /// The clip range of `diffusion.clip_denoised`, in the space the process diffuses: the
    /// training rows' range through the run's standardisation.
    fn clip_range(&self) -> Result<Option<ClipRange>, ConfigError> {
        if !self.config.diffusion.clip_denoised {
            return Ok(None);
        }
        let range = self
            .standardization
            .as_ref()
            .and_then(|s| s.standardized_range());
        let Some((low, high)) = range else {
            return Err(ConfigError::Invalid(
                "diffusion.clip_denoised: the run records no data range (config.json's \
                 standardization.range)"
                    .into(),
            ));
        };
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        Ok(Some(ClipRange {
            low: f32s(low),
            high: f32s(high),
        }))
    }

    /// Refuses networks too large to train here: more than [`MAX_PARAMETERS`] parameters.
    pub fn check_model_size(&self) -> Result<(), ConfigError> {
        let out = self.bound()?.output_dim();
        let d = &self.config.diffusion;
        let learned = match d.schedule {
            BetaSchedule::Learned { .. } => d.steps as u128 - 1,
            _ => 0,
        };
        self.config
            .model
            .check_image(self.image)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let parameters =
            self.config
                .model
                .parameter_count_for(self.image, self.data_dim, out, d.steps)
                + learned;
        if parameters > MAX_PARAMETERS {
            return Err(ConfigError::TooLarge {
                parameters,
                max: MAX_PARAMETERS,
            });
        }
        Ok(())
    }

    /// A freshly initialised network of this run's shape.
    pub fn init_model(&self, device: &Device) -> Result<ReverseModel<Network>, ConfigError> {
        self.check_model_size()?;
        let bound = self.bound()?;
        let model = ReverseModel::new(self.config.model.init_for(
            self.image,
            self.data_dim,
            bound.output_dim(),
            self.config.diffusion.steps,
            matches!(bound, Diffusion::Gaussian(_)),
            device,
        ));
        Ok(match (&self.config.diffusion.schedule, &bound) {
            (BetaSchedule::Learned { .. }, Diffusion::Gaussian(g)) => {
                model.with_learned_schedule(g.diffusion.betas(), device)
            }
            _ => model,
        })
    }

    /// The diffusion of a trained network: [`bound`](Self::bound) with the network's own betas
    /// when it learned its schedule.
    pub fn bound_of<N: ReverseNetwork>(
        &self,
        model: &ReverseModel<N>,
    ) -> Result<Diffusion, ConfigError> {
        let bound = self.bound()?;
        Ok(match (bound, model.learned_schedule()) {
            (Diffusion::Gaussian(g), Some(schedule)) => Diffusion::Gaussian(GaussianBound {
                diffusion: GaussianDiffusion::new(schedule.host_betas(), self.data_dim)
                    .map_err(ConfigError::LearnedSchedule)?,
                parametrization: g.parametrization,
                clip: None,
                decoder: None,
                respaced: None,
            }),
            (bound, _) => bound,
        })
    }
}

/// The largest network a run may have (1 GiB of f32 weights).
pub const MAX_PARAMETERS: u128 = 1 << 28;

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl RunDir {
    /// Creates `path` for a new run. An existing non-empty folder is refused unless `overwrite`,
    /// in which case only the files a run writes are replaced as training writes them.
    pub fn create(path: &Path, overwrite: bool) -> Result<Self, RunError> {
        if path.exists() {
            let empty = fs::read_dir(path).map_err(io_err(path))?.next().is_none();
            if !empty && !overwrite {
                return Err(RunError::Exists(path.display().to_string()));
            }
        }
        fs::create_dir_all(path).map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The first of `base`, `base-2`, `base-3`, ... that does not exist yet.
    pub fn fresh_path(base: &Path) -> PathBuf {
        if !base.exists() {
            return base.to_path_buf();
        }
        let name = base
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        (2..)
            .map(|i| base.with_file_name(format!("{name}-{i}")))
            .find(|p| !p.exists())
            .expect("an unused name")
    }

    /// Opens an existing run folder.
    pub fn open(path: &Path) -> Result<Self, RunError> {
        if !path.join("config.json").is_file() {
            return Err(RunError::NotARun(path.display().to_string()));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file in the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `bytes` to `name` atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), RunError> {
        let p = self.file(name);
        write_atomic(&p, bytes).map_err(io_err(&p))
    }

    /// Writes a value as pretty JSON.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), RunError> {
        let text = serde_json::to_string_pretty(value).expect("serialisable");
        self.write(name, format!("{text}\n").as_bytes())
    }

    /// Reads `config.json`.
    pub fn manifest(&self) -> Result<RunManifest, RunError> {
        let p = self.file("config.json");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        let corrupt = |message: String| RunError::Corrupt {
            path: p.display().to_string(),
            message,
        };
        let m: RunManifest = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if m.format != MANIFEST_FORMAT {
            return Err(corrupt(format!(
                "format {:?} is not {MANIFEST_FORMAT:?}",
                m.format
            )));
        }
        m.config.validate().map_err(|e| corrupt(e.to_string()))?;
        m.bound().map_err(|e| corrupt(e.to_string()))?;
        if let Some(s) = &m.standardization {
            let d = m.data_dim;
            let lengths = [
                s.mean.len(),
                s.scale.len(),
                s.data_mean.len(),
                s.data_sd.len(),
            ];
            if lengths.iter().any(|&l| l != d) {
                return Err(corrupt(format!(
                    "standardization has {lengths:?} values where the data have {d} columns"
                )));
            }
            let positive = |v: &[f64]| v.iter().all(|x| x.is_finite() && *x > 0.0);
            if !positive(&s.scale) || !positive(&s.data_sd) || s.mean.iter().any(|x| !x.is_finite())
            {
                return Err(corrupt(
                    "standardization scales must be finite and > 0".into(),
                ));
            }
        }
        Ok(m)
    }

    /// Saves the network as `model.bpk`.
    pub fn save_model<M: Module>(&self, model: &M) -> Result<(), RunError> {
        self.save_weights(model, Weights::Raw)
    }

    /// Saves the network as `model.bpk` (raw weights) or `model_ema.bpk` (their moving
    /// average).
    pub fn save_weights<M: Module>(&self, model: &M, weights: Weights) -> Result<(), RunError> {
        let name = weights.file().unwrap_or("model.bpk");
        let p = self.file(name);
        let bytes = model
            .valid()
            .into_record()
            .into_bytes()
            .map_err(|e| RunError::Corrupt {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
        self.write(name, &bytes)
    }

    /// Loads the run's default weights (the moving average when the run has one, else
    /// `model.bpk`) into a network of the manifest's shape on `device`.
    pub fn load_model(
        &self,
        manifest: &RunManifest,
        device: &Device,
    ) -> Result<ReverseModel<Network>, RunError> {
        self.load_weights(manifest, device, Weights::Default)
            .map(|(model, _)| model)
    }

    /// Which weights [`Weights::Default`] means for this run.
    pub fn default_weights(&self) -> Weights {
        if self.file(EMA_FILE).is_file() {
            Weights::Ema
        } else {
            Weights::Raw
        }
    }

    /// Loads `weights` into a network of the manifest's shape on `device`; returns which
    /// weights were loaded ([`Weights::Default`] resolved).
    pub fn load_weights(
        &self,
        manifest: &RunManifest,
        device: &Device,
        weights: Weights,
    ) -> Result<(ReverseModel<Network>, Weights), RunError> {
        let weights = match weights {
            Weights::Default => self.default_weights(),
            w => w,
        };
        let name = weights.file().unwrap_or("model.bpk");
        let p = self.file(name);
        if weights == Weights::Ema && !p.is_file() {
            return Err(RunError::NoAverage {
                path: self.path().display().to_string(),
            });
        }
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        let corrupt = |message: String| RunError::Corrupt {
            path: p.display().to_string(),
            message,
        };
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| corrupt(format!("not a model record ({e})")))?;
        let model = manifest
            .init_model(device)
            .map_err(|e| corrupt(e.to_string()))?
            .try_load_record(record)
            .map_err(|e| corrupt(format!("does not match the run's model ({e})")))?;
        Ok((model, weights))
    }
}

/// Which of a run's weights to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The moving average when the run has one (`train.ema_decay`), else the raw weights.
    #[default]
    Default,
    /// The optimizer's weights after the last step (`model.bpk`).
    Raw,
    /// Their moving average (`model_ema.bpk`).
    Ema,
}

impl Weights {
    /// The file these weights live in (`None` for [`Weights::Default`], which depends on the
    /// run).
    pub fn file(self) -> Option<&'static str> {
        match self {
            Self::Default => None,
            Self::Raw => Some("model.bpk"),
            Self::Ema => Some(EMA_FILE),
        }
    }

    /// `raw`, `ema` or `default`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Raw => "raw",
            Self::Ema => "ema",
        }
    }
}
