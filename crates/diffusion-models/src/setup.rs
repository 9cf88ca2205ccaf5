//! Starting and continuing runs: a configuration's data resolved ([`resolve`]), a new run
//! folder made for it ([`Run::create`]), or a stopped run opened at its newest checkpoint
//! ([`Run::resume`]); then [`Run::train`].
//!
//! ```
//! use burn::tensor::Device;
//! use diffusion_models::{Run, RunConfig};
//!
//! let config = RunConfig::from_toml(r#"
//!     [diffusion]
//!     steps = 20
//!     schedule = { kind = "linear", start = 1e-3, end = 0.3 }
//!     [data]
//!     kind = "swiss-roll"
//!     [model]
//!     hidden = [16]
//!     [train]
//!     steps = 50
//!     batch_size = 64
//! "#)?;
//! let folder = tempfile::tempdir()?;
//! let run = Run::create(diffusion_models::resolve(config)?, folder.path(), true, "flex")?;
//! let (model, summary) = run.train(&Device::flex(), &mut |_| {})?;
//! assert!(folder.path().join("model.bpk").is_file());
//! assert_eq!(summary.steps, 50);
//! # let _ = model;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use burn::tensor::Device;
use diffusion_data::{Array2, Heartbeat, ImageShape, Scaling, Standardization, SwissRoll, io};

use crate::bound::Diffusion;
use crate::checkpoint::{self, Checkpoint};
use crate::config::{DataConfig, LastStep, ProcessKind, RunConfig};
use crate::data::{TrainingData, streams};
use crate::model::Network;
use crate::network::ReverseModel;
use crate::run::{RunDir, RunError, RunManifest};
use crate::source::{DataSource, SourceFile};
use crate::trainer::TrainError;
use crate::training::{Progress, TrainSummary, train};

/// The training rows of a run trained on a data file, kept in the run folder for `resume`.
pub const TRAIN_ROWS: &str = "train.npy";

/// The held-out rows of a run trained on a data file.
pub const HELDOUT_ROWS: &str = "heldout.npy";

/// A configuration with its data: the training stream, the data dimension, a binomial run's pi
/// (from the data's mean activity unless set), and for file data the training and held-out rows.
#[derive(Debug, Clone)]
pub struct ResolvedData {
    /// The configuration, pi resolved.
    pub config: RunConfig,
    /// The data dimension d.
    pub dim: usize,
    /// Image data: the shape of each row (from an IDX file or a 3-D or 4-D `.npy`).
    pub image: Option<ImageShape>,
    /// File data: the files, for the run folder to refer to.
    pub source: Option<DataSource>,
    /// Where training batches come from.
    pub data: TrainingData,
    /// File data: (training rows, held-out rows), in the data's own units.
    pub files: Option<(Array2, Array2)>,
    /// Gaussian runs on file data: the standardisation fitted on the training rows.
    pub standardization: Option<Standardization>,
    /// What the caller may want to tell the user (e.g. a forward process that stops far from
    /// its stationary distribution).
    pub warnings: Vec<String>,
}

/// Validates `config`, reads or sets up its data (the seeded held-out split for file data) and
/// resolves what depends on the data; touches no run folder, so bad data leave no trace.
pub fn resolve(mut config: RunConfig) -> Result<ResolvedData, RunError> {
    config.validate()?;
    let LoadedData {
        data,
        dim,
        mean_activity,
        image,
        source,
        files,
        standardization,
    } = load_data(&config)?;
    resolve_pi(&mut config, mean_activity)?;
    let check = RunManifest::new(config.clone(), dim, "")
        .with_image(image)
        .with_standardization(standardization.clone());
    check.check_model_size()?;
    let warnings = bound_warnings(&check)?;
    Ok(ResolvedData {
        config,
        dim,
        image,
        source,
        data,
        files,
        standardization,
        warnings,
    })
}

/// A configuration's data, read or set up, before what depends on them is resolved.
struct LoadedData {
    data: TrainingData,
    dim: usize,
    mean_activity: Option<f64>,
    image: Option<ImageShape>,
    source: Option<DataSource>,
    files: Option<(Array2, Array2)>,
    standardization: Option<Standardization>,
}

impl LoadedData {
    /// Generated data of dimension `dim`: no files, image shape or standardisation.
    fn generated(data: TrainingData, dim: usize, mean_activity: Option<f64>) -> Self {
        Self {
            data,
            dim,
            mean_activity,
            image: None,
            source: None,
            files: None,
            standardization: None,
        }
    }
}

/// Reads or sets up `config`'s data: the generator, or for file data the rows read and checked,
/// the seeded held-out split (or the test file) and a Gaussian run's fitted standardisation.
fn load_data(config: &RunConfig) -> Result<LoadedData, RunError> {
    let seed = config.train.seed;
    let binary = config.diffusion.process == ProcessKind::Binomial;
    match &config.data {
        DataConfig::SwissRoll { noise } => {
            let roll = SwissRoll::new(*noise).map_err(RunError::Data)?;
            let data = TrainingData::swiss_roll(roll, seed);
            Ok(LoadedData::generated(data, 2, None))
        }
        DataConfig::Heartbeat { length, period } => {
            let beat = Heartbeat::new(*length, *period).map_err(RunError::Data)?;
            let activity = beat.mean_activity();
            let data = TrainingData::heartbeat(beat, seed);
            Ok(LoadedData::generated(data, *length, Some(activity)))
        }
        DataConfig::File {
            path,
            heldout_fraction,
            test_path,
            standardize,
            dequantize,
            logit_alpha,
            binarize,
        } => {
            let (points, shape, source, test) =
                read_file_rows(config, path, test_path.as_deref(), *binarize)?;
            let (train_rows, held) = split_rows(&points, test, *heldout_fraction, seed)?;
            let activity = train_rows.data.iter().map(|&v| v as f64).sum::<f64>()
                / train_rows.data.len() as f64;
            let standardization = if binary {
                None
            } else {
                Some(fit_standardization(
                    &train_rows,
                    &points,
                    *standardize,
                    *dequantize,
                    *logit_alpha,
                    seed,
                )?)
            };
            let files = Some((train_rows.clone(), held));
            let data = TrainingData::points(train_rows, standardization.clone(), seed);
            Ok(LoadedData {
                data,
                dim: points.cols,
                mean_activity: Some(activity),
                image: shape,
                source: Some(source),
                files,
                standardization,
            })
        }
    }
}

/// The rows of `path` and, for `test_path`, the test rows (binarised at `binarize`), with the
/// image shape and the files' record; refused if not binary for a binomial run or not 8-bit
/// for a discretized decoder.
fn read_file_rows(
    config: &RunConfig,
    path: &Path,
    test_path: Option<&Path>,
    binarize: Option<f64>,
) -> Result<(Array2, Option<ImageShape>, DataSource, Option<Array2>), RunError> {
    let (mut points, shape) = io::read_shaped(path).map_err(RunError::Data)?;
    binarized(&mut points, binarize);
    let source = record_source(path, test_path)?;
    if config.diffusion.process == ProcessKind::Binomial {
        check_binary(&points, path)?;
    }
    let test = test_path
        .map(|t| read_test_rows(t, &points, shape))
        .transpose()?
        .map(|mut rows| {
            binarized(&mut rows, binarize);
            rows
        });
    if config.diffusion.decoder == LastStep::Discretized {
        eight_bit(&points, path)?;
        if let (Some(rows), Some(t)) = (&test, test_path) {
            eight_bit(rows, t)?;
        }
    }
    Ok((points, shape, source, test))
}

/// The files of file data: the training file and the test file if any, each with its SHA-256.
fn record_source(path: &Path, test_path: Option<&Path>) -> Result<DataSource, RunError> {
    let record = |p: &Path| {
        SourceFile::of(p).map_err(|source| RunError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    Ok(DataSource {
        train: record(path)?,
        test: test_path.map(record).transpose()?,
    })
}

/// Refuses rows (read from `path`) for a binomial run unless every value is 0 or 1.
fn check_binary(points: &Array2, path: &Path) -> Result<(), RunError> {
    match first_outside(points, |v| v == 0.0 || v == 1.0) {
        None => Ok(()),
        Some((value, row, column)) => Err(RunError::NotBinary {
            path: path.display().to_string(),
            value,
            row,
            column,
        }),
    }
}

/// Refuses rows with a value that is not an integer in 0..=255 (the discretised decoder's bins).
fn eight_bit(rows: &Array2, path: &Path) -> Result<(), RunError> {
    match first_outside(rows, |v| v.fract() == 0.0 && (0.0..=255.0).contains(&v)) {
        None => Ok(()),
        Some((value, row, column)) => Err(RunError::NotEightBit {
            path: path.display().to_string(),
            value,
            row,
            column,
        }),
    }
}

/// The first value of `rows` that `allowed` refuses, with its row and column.
fn first_outside(rows: &Array2, allowed: impl Fn(f32) -> bool) -> Option<(f32, usize, usize)> {
    let i = rows.data.iter().position(|&v| !allowed(v))?;
    Some((rows.data[i], i / rows.cols, i % rows.cols))
}

/// A Gaussian run's standardisation (per coordinate unless set) fitted on `train_rows`; with
/// `logit_alpha`, after the logit map whose levels run to the largest value in `points`.
fn fit_standardization(
    train_rows: &Array2,
    points: &Array2,
    standardize: Option<Scaling>,
    dequantize: bool,
    logit_alpha: Option<f64>,
    seed: u64,
) -> Result<Standardization, RunError> {
    let scaling = standardize.unwrap_or(Scaling::PerCoordinate);
    Ok(match logit_alpha {
        None => Standardization::fit(train_rows, scaling, dequantize),
        Some(alpha) => {
            let top = points.data.iter().cloned().fold(0.0f32, f32::max) as f64;
            let logit = diffusion_data::standardize::Logit {
                levels: top.floor() + 1.0,
                alpha,
            };
            Standardization::fit_logit(train_rows, scaling, dequantize, logit, seed)
                .map_err(RunError::Data)?
        }
    })
}

/// A binomial run's pi, when not set: the data's mean activity (0.5 when unknown), which must
/// lie strictly between 0 and 1.
fn resolve_pi(config: &mut RunConfig, mean_activity: Option<f64>) -> Result<(), RunError> {
    let binary = config.diffusion.process == ProcessKind::Binomial;
    if binary && config.diffusion.pi.is_none() {
        let pi = mean_activity.unwrap_or(0.5);
        if !(pi > 0.0 && pi < 1.0) {
            return Err(RunError::MeanActivity(pi));
        }
        config.diffusion.pi = Some(pi);
    }
    Ok(())
}

/// What the user may want to know about the run's bound: a Gaussian forward process that ends
/// far from N(0, I).
fn bound_warnings(check: &RunManifest) -> Result<Vec<String>, RunError> {
    let mut warnings = Vec::new();
    if let Diffusion::Gaussian(g) = check.bound()? {
        let abar_t = g.diffusion.alpha_bar(g.diffusion.steps());
        if abar_t > 0.1 {
            warnings.push(format!(
                "abar_T = {abar_t:.3}: the forward process does not reach near N(0, I); \
                 the bound will be loose"
            ));
        }
    }
    Ok(warnings)
}

/// The training and held-out rows of a run on file data, in the data's own units: rebuilt from
/// the data files the run names (each checked against its SHA-256; the seeded split redone, or
/// the test file read), or read from the copies that runs made before kept in their folder.
pub fn file_rows(manifest: &RunManifest, run: &RunDir) -> Result<(Array2, Array2), RunError> {
    let check = |a: Array2, p: &Path| {
        if a.cols != manifest.data_dim {
            return Err(RunError::Corrupt {
                path: p.display().to_string(),
                message: format!("{} columns, the run has {}", a.cols, manifest.data_dim),
            });
        }
        Ok(a)
    };
    let copy = |name: &str| -> Result<Option<Array2>, RunError> {
        let p = run.file(name);
        if !p.is_file() {
            return Ok(None);
        }
        let a = io::read(&p).map_err(|e| RunError::Corrupt {
            path: p.display().to_string(),
            message: e.to_string(),
        })?;
        check(a, &p).map(Some)
    };
    if let (Some(train), Some(held)) = (copy(TRAIN_ROWS)?, copy(HELDOUT_ROWS)?) {
        return Ok((train, held));
    }
    let config = run.file("config.json");
    let Some(source) = &manifest.source else {
        return Err(RunError::Corrupt {
            path: config.display().to_string(),
            message: "a run on file data that names no data files and keeps no rows".into(),
        });
    };
    let (fraction, threshold) = match &manifest.config.data {
        DataConfig::File {
            heldout_fraction,
            binarize,
            ..
        } => (*heldout_fraction, *binarize),
        _ => unreachable!("a data source belongs to file data"),
    };
    let read = |f: &crate::source::SourceFile| -> Result<Array2, RunError> {
        let corrupt = |message: String| RunError::Corrupt {
            path: config.display().to_string(),
            message,
        };
        f.check().map_err(corrupt)?;
        let (mut a, _) = io::read_shaped(&f.path).map_err(|e| corrupt(e.to_string()))?;
        binarized(&mut a, threshold);
        check(a, &f.path)
    };
    let points = read(&source.train)?;
    let test = source.test.as_ref().map(read).transpose()?;
    split_rows(&points, test, fraction, manifest.config.train.seed)
}

/// `data.binarize`: each value 1 where it is at least `threshold`, else 0.
fn binarized(rows: &mut Array2, threshold: Option<f64>) {
    if let Some(threshold) = threshold {
        for v in rows.data.iter_mut() {
            *v = f32::from(u8::from(*v as f64 >= threshold));
        }
    }
}

/// The training and held-out rows of file data: all of `points` and the test file's rows, or
/// the split of `points` seeded by the run's seed.
fn split_rows(
    points: &Array2,
    test: Option<Array2>,
    fraction: f64,
    seed: u64,
) -> Result<(Array2, Array2), RunError> {
    match test {
        Some(test) => Ok((points.clone(), test)),
        None => {
            let mut rng = diffusion_data::rng(seed, streams::HELDOUT);
            diffusion_data::split(points, fraction, &mut rng).map_err(RunError::Split)
        }
    }
}

/// The rows of a separate test file, which must match the training rows' columns and shape.
fn read_test_rows(
    path: &Path,
    train: &Array2,
    shape: Option<ImageShape>,
) -> Result<Array2, RunError> {
    let (rows, test_shape) = io::read_shaped(path).map_err(RunError::Data)?;
    if rows.cols != train.cols || test_shape != shape {
        let show = |cols: usize, s: Option<ImageShape>| match s {
            Some(s) => format!("images of {s}"),
            None => format!("{cols} columns"),
        };
        return Err(RunError::Data(diffusion_data::DataError::Invalid(format!(
            "{}: {}, where the training data have {}",
            path.display(),
            show(rows.cols, test_shape),
            show(train.cols, shape)
        ))));
    }
    Ok(rows)
}

/// A run ready to train: its folder, manifest, training stream, and the checkpoint it
/// continues from.
#[derive(Debug)]
pub struct Run {
    /// The run folder.
    pub dir: RunDir,
    /// Its `config.json`.
    pub manifest: RunManifest,
    /// Where training batches come from.
    pub data: TrainingData,
    /// The checkpoint a resumed run continues from.
    pub resume: Option<Checkpoint>,
}

impl Run {
    /// Makes the folder `out` for a new run of `resolved` on `backend` and writes its
    /// `config.json` (and, for file data, the training and held-out rows). An existing
    /// non-empty folder is refused unless `overwrite`; then its old checkpoints are removed.
    pub fn create(
        resolved: ResolvedData,
        out: &Path,
        overwrite: bool,
        backend: &str,
    ) -> Result<Self, RunError> {
        let dir = RunDir::create(out, overwrite)?;
        if overwrite {
            // Old checkpoints belong to the run being replaced.
            let old = checkpoint::folder(&dir);
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|source| RunError::Io {
                    path: old.display().to_string(),
                    source,
                })?;
            }
        }
        let manifest = RunManifest::new(resolved.config, resolved.dim, backend)
            .with_standardization(resolved.standardization)
            .with_image(resolved.image);
        let manifest = RunManifest {
            source: resolved.source,
            ..manifest
        };
        dir.write_json("config.json", &manifest)?;
        // the held-out rows of a seeded split, for a look at them (a test file is its own)
        if let (Some((_, held)), Some(source)) = (&resolved.files, &manifest.source)
            && source.test.is_none()
        {
            io::write(&dir.file(HELDOUT_ROWS), held).map_err(RunError::Data)?;
        }
        Ok(Self {
            dir,
            manifest,
            data: resolved.data,
            resume: None,
        })
    }

    /// Opens the run folder `path` to continue it from its newest checkpoint, with the data
    /// stream it was started with.
    pub fn resume(path: &Path) -> Result<Self, RunError> {
        let dir = RunDir::open(path)?;
        let manifest = dir.manifest()?;
        let resume =
            checkpoint::latest(&dir, &manifest.config)?.ok_or_else(|| RunError::NoCheckpoint {
                run: path.display().to_string(),
                folder: checkpoint::folder(&dir).display().to_string(),
            })?;
        let seed = manifest.config.train.seed;
        let stream = diffusion_data::rng(seed, streams::TRAIN_DATA);
        let data =
            match TrainingData::generator(&manifest.config.data, stream).map_err(RunError::Data)? {
                Some((data, _)) => data,
                None => {
                    let (rows, _) = file_rows(&manifest, &dir)?;
                    TrainingData::points(rows, manifest.standardization.clone(), seed)
                }
            };
        Ok(Self {
            dir,
            manifest,
            data,
            resume: Some(resume),
        })
    }

    /// Trains the run on `device` (autodiff is added here) into its folder; returns the weights
    /// evaluation and sampling use by default (the moving average, with `train.ema_decay`).
    pub fn train(
        self,
        device: &Device,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<(ReverseModel<Network>, TrainSummary), TrainError> {
        train(
            &self.manifest,
            self.data,
            device,
            &self.dir,
            self.resume.as_ref(),
            on_progress,
        )
    }
}
