//! The condition options (`--known`, `--observe`, their files, `--condition-mode`) as the
//! library's [`Conditioning`].

use std::path::Path;

use diffusion_data::{Standardization, io};
use diffusion_models::completion::{ImageTask, Mask, TaskImages};
use diffusion_models::condition::Variable;
use diffusion_models::{Condition, ConditionMode, Conditioning, Factor, RunDir, RunManifest};

use crate::args::{ConditionArgs, Mode};

/// One source of factors: the same for every sample, or one row per sample.
struct Rows(Vec<Condition>);

/// What a run adds to the options: its units, the `--from-test` conditions, whether its values
/// are bounded (images), and the particle systems' size per image.
#[derive(Default)]
struct RunSide<'a> {
    units: Option<&'a Standardization>,
    task: Option<Rows>,
    bounded: bool,
    group: Option<usize>,
}

/// `, renoised: R draws of every J step(s)` for a report's line, nothing for the plain chain.
pub fn renoised_note(renoised: Option<[usize; 2]>) -> String {
    match renoised {
        Some([r, j]) => format!(", renoised: {r} draws of every {j} step(s)"),
        None => String::new(),
    }
}

impl ConditionArgs {
    /// `--renoise R --renoise-jump J` as (R, J), `None` for the plain chain (R = 1 or none).
    pub fn renoising(&self) -> Option<[usize; 2]> {
        let r = self.renoise.filter(|&r| r > 1)?;
        Some([r, self.renoise_jump.unwrap_or(1)])
    }

    /// Whether any condition was asked for.
    pub fn is_set(&self) -> bool {
        self.known.is_some()
            || self.observe.is_some()
            || self.known_file.is_some()
            || self.observe_file.is_some()
            || self.from_test.is_some()
    }

    /// The task of `--from-test` with `--mask` or `--noisy-test`: the held-out images and what
    /// is known of them (noise drawn from `seed`); `None` without `--from-test`.
    pub fn test_task(
        &self,
        manifest: &RunManifest,
        run: &RunDir,
        seed: u64,
    ) -> Result<Option<TaskImages>, String> {
        let Some(images) = self.from_test else {
            if self.mask.is_some() || self.noisy_test.is_some() {
                return Err("--mask and --noisy-test need --from-test N".into());
            }
            return Ok(None);
        };
        if images == 0 {
            return Err("--from-test must be at least 1".into());
        }
        let task = match (&self.mask, self.noisy_test) {
            (Some(mask), None) => {
                ImageTask::Inpaint(mask.parse::<Mask>().map_err(|e| format!("--{e}"))?)
            }
            (None, Some(noise)) => ImageTask::Denoise { noise },
            _ => return Err("--from-test needs one of --mask or --noisy-test".into()),
        };
        TaskImages::of_run(manifest, run, task, images, seed)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The conditions for `n` samples of data with `dim` coordinates, or `None` when no option
    /// asks for one.
    pub fn resolve(
        &self,
        dim: usize,
        variable: Variable,
        n: usize,
    ) -> Result<Option<Conditioning>, String> {
        self.resolve_in(dim, variable, n, RunSide::default())
    }

    /// [`ConditionArgs::resolve`] for a run: values and noise are given in the data's own
    /// units and mapped into the space the run's model diffuses; `--from-test` reads the run's
    /// held-out images (the noise of `--noisy-test` drawn from `seed`).
    pub fn resolve_for(
        &self,
        manifest: &RunManifest,
        run: &RunDir,
        variable: Variable,
        n: usize,
        seed: u64,
    ) -> Result<Option<Conditioning>, String> {
        let task = self.test_task(manifest, run, seed)?;
        self.resolve_with(manifest, variable, n, task.as_ref())
    }

    /// [`ConditionArgs::resolve_for`] with the `--from-test` images already read.
    pub fn resolve_with(
        &self,
        manifest: &RunManifest,
        variable: Variable,
        n: usize,
        task: Option<&TaskImages>,
    ) -> Result<Option<Conditioning>, String> {
        let units = manifest
            .standardization
            .as_ref()
            .filter(|s| !s.is_identity());
        let observing =
            self.observe.is_some() || self.observe_file.is_some() || self.noisy_test.is_some();
        if observing && units.is_some_and(|u| u.logit.is_some()) {
            return Err(
                "--observe on a run with data.logit_alpha: a Gaussian noise has no fixed scale \
                 through the logit map; condition on --known values instead"
                    .into(),
            );
        }
        let (task, group) = match task {
            Some(task) if !n.is_multiple_of(task.len()) => {
                return Err(format!(
                    "-n {n} is not a multiple of --from-test {}: sample r completes image r mod {}",
                    task.len(),
                    task.len()
                ));
            }
            // resampled, the chains of an image are consecutive (one particle system each) and
            // `ungroup` puts the samples back in the order r -> image r mod N
            Some(task) if self.resample => {
                let per = n / task.len();
                let rows = (0..n).map(|c| task.conditions[c / per].clone()).collect();
                (Some(Rows(rows)), Some(per))
            }
            Some(task) => {
                let rows = (0..n)
                    .map(|r| task.conditions[r % task.len()].clone())
                    .collect();
                (Some(Rows(rows)), None)
            }
            None => (None, None),
        };
        let side = RunSide {
            units,
            task,
            bounded: manifest.image.is_some(),
            group,
        };
        self.resolve_in(manifest.data_dim, variable, n, side)
    }

    /// The conditions of the options and of `side` (the run's units, `--from-test` rows) for
    /// `n` samples of data with `dim` coordinates, or `None` when no option asks for one.
    fn resolve_in(
        &self,
        dim: usize,
        variable: Variable,
        n: usize,
        side: RunSide,
    ) -> Result<Option<Conditioning>, String> {
        let RunSide {
            units,
            task,
            bounded,
            group,
        } = side;
        let observing = self.observe.is_some() || self.observe_file.is_some();
        if self.observe_noise.is_some() && !observing {
            return Err("--observe-noise needs --observe or --observe-file".into());
        }
        if self.renoise_jump.is_some() && self.renoise.is_none() {
            return Err("--renoise-jump needs --renoise".into());
        }
        if self.average == Some(0) {
            return Err("--average must be at least 1".into());
        }
        if !self.is_set() {
            if self.average.is_some() {
                return Err("--average takes the mean of conditioned draws: give a condition (--known, --observe, --from-test, ...)".into());
            }
            if self.renoise.is_some() {
                return Err("--renoise redraws the steps of a conditioned chain: give a condition (--known, --observe, --from-test, ...)".into());
            }
            return Ok(None);
        }
        let noise = match (observing, self.observe_noise) {
            (true, None) => {
                return Err("--observe and --observe-file need --observe-noise".into());
            }
            (_, noise) => noise.unwrap_or(0.0),
        };
        let mut sources = self.option_sources(dim, n, noise)?;
        sources.extend(task);
        // an image's known pixel outside the training data's range is no pixel of these data
        check_known_in_range(&sources, units.and_then(|u| u.range).filter(|_| bounded))?;
        let conditions = merge_sources(&sources, units, dim);
        self.conditioning(&conditions, dim, variable, n, group)
            .map(Some)
    }

    /// The sources of factors that `--known`, `--observe` (with `noise`), `--known-file` and
    /// `--observe-file` give, in that order.
    fn option_sources(&self, dim: usize, n: usize, noise: f64) -> Result<Vec<Rows>, String> {
        let mut sources = Vec::new();
        if let Some(text) = &self.known {
            sources.push(Rows(vec![parse_known(text)?]));
        }
        if let Some(text) = &self.observe {
            sources.push(Rows(vec![parse_observe(text, dim, noise)?]));
        }
        if let Some(path) = &self.known_file {
            sources.push(file_rows(path, dim, n, None)?);
        }
        if let Some(path) = &self.observe_file {
            sources.push(file_rows(path, dim, n, Some(noise))?);
        }
        Ok(sources)
    }

    /// The [`Conditioning`] of `conditions` in `--condition-mode`, resampled (in particle
    /// systems of `group` chains, if given) with `--resample`, checked for `n` samples.
    fn conditioning(
        &self,
        conditions: &[Condition],
        dim: usize,
        variable: Variable,
        n: usize,
        group: Option<usize>,
    ) -> Result<Conditioning, String> {
        let mode = match self.condition_mode {
            Mode::Constant => ConditionMode::Constant,
            Mode::Forward => ConditionMode::Forward,
            Mode::Likelihood => ConditionMode::Likelihood,
            Mode::Twisted => ConditionMode::Twisted,
        };
        let mut given =
            Conditioning::new(conditions, dim, variable, mode).map_err(|e| e.to_string())?;
        if self.resample {
            given = match group {
                Some(size) => given.resampled_in_groups(size),
                None => given.resampled(),
            }
            .map_err(|e| format!("--resample: {e}"))?;
        }
        given = given
            .renoised(self.renoise.unwrap_or(1), self.renoise_jump.unwrap_or(1))
            .map_err(|e| format!("--renoise / --renoise-jump: {e}"))?;
        given.check(dim, variable, n).map_err(|e| e.to_string())?;
        Ok(given)
    }
}

/// An error for the first known value in `sources` outside `range` (the training data's, for
/// images); none without a range.
fn check_known_in_range(sources: &[Rows], range: Option<[f64; 2]>) -> Result<(), String> {
    let Some([lo, hi]) = range else {
        return Ok(());
    };
    let outside = sources.iter().flat_map(|s| &s.0).find_map(|c| {
        c.factors().iter().find_map(|f| match *f {
            Factor::Known { index, value } if !(lo..=hi).contains(&(value as f64)) => {
                Some((index, value))
            }
            _ => None,
        })
    });
    if let Some((index, value)) = outside {
        return Err(format!(
            "known value {value} of coordinate {index} lies outside the training data's \
             range [{lo}, {hi}]"
        ));
    }
    Ok(())
}

/// One condition per row of the longest source (a one-row source applies to every row), its
/// factors those of each source in order, standardised into `units` where given.
fn merge_sources(sources: &[Rows], units: Option<&Standardization>, dim: usize) -> Vec<Condition> {
    let rows = sources.iter().map(|s| s.0.len()).max().unwrap_or(1);
    (0..rows)
        .map(|r| {
            let mut c = Condition::new();
            for s in sources {
                let row = &s.0[if s.0.len() == 1 { 0 } else { r }];
                for f in row.factors() {
                    c = c.with(match units {
                        Some(u) if f.index() < dim => f.standardized(u),
                        _ => *f,
                    });
                }
            }
            c
        })
        .collect()
}

/// Samples drawn in particle systems of `group` consecutive chains per condition
/// ([`Conditioning::particle_group`]) in the order of `--from-test`: sample r of image r mod N.
pub fn ungroup(chains: Vec<f32>, d: usize, group: usize) -> Vec<f32> {
    let images = chains.len() / d / group.max(1);
    let mut out = vec![0.0; chains.len()];
    for (c, row) in chains.chunks_exact(d).enumerate() {
        let (g, j) = (c / group, c % group);
        let r = j * images + g;
        out[r * d..(r + 1) * d].copy_from_slice(row);
    }
    out
}

/// `I=V,I=V,...`.
fn parse_known(text: &str) -> Result<Condition, String> {
    let mut c = Condition::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || format!("--known {item:?}: expected I=V (0-based coordinate = value)");
        let (i, v) = item.split_once('=').ok_or_else(bad)?;
        let i: usize = i.trim().parse().map_err(|_| bad())?;
        let v: f32 = v.trim().parse().map_err(|_| bad())?;
        c = c.known(i, v);
    }
    if c.factors().is_empty() {
        return Err("--known needs at least one I=V".into());
    }
    Ok(c)
}

/// `V1,V2,...`, one value per coordinate (`nan` or nothing between the commas where a coordinate
/// is not observed), or `I=V,...` for some coordinates.
fn parse_observe(text: &str, dim: usize, noise: f64) -> Result<Condition, String> {
    if text.contains('=') {
        let c = parse_known(text).map_err(|e| e.replace("--known", "--observe"))?;
        return Ok(c.factors().iter().fold(Condition::new(), |o, f| match *f {
            Factor::Known { index, value } | Factor::Observed { index, value, .. } => {
                o.observed(index, value, noise)
            }
        }));
    }
    let values: Vec<f32> = text
        .split(',')
        .map(|v| match v.trim() {
            "" => Ok(f32::NAN),
            v => v
                .parse::<f32>()
                .map_err(|_| format!("--observe: {v:?} is not a number")),
        })
        .collect::<Result<_, _>>()?;
    if values.len() != dim {
        return Err(format!(
            "--observe has {} values, the run's data have {dim} coordinates (or give I=V,...)",
            values.len()
        ));
    }
    Ok(values
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .fold(Condition::new(), |c, (i, v)| c.observed(i, v, noise)))
}

/// A file of known values (`noise` None) or observations: one row for all samples or one per
/// sample, NaN where a coordinate has no factor.
fn file_rows(path: &Path, dim: usize, n: usize, noise: Option<f64>) -> Result<Rows, String> {
    let a = io::read_with_gaps(path).map_err(|e| e.to_string())?;
    if a.cols != dim {
        return Err(format!(
            "{}: {} columns, the run's data have {dim}",
            path.display(),
            a.cols
        ));
    }
    if a.rows != 1 && a.rows != n {
        return Err(format!(
            "{}: {} rows for {n} samples: give one row for all, or one per sample",
            path.display(),
            a.rows
        ));
    }
    Ok(Rows(
        (0..a.rows)
            .map(|r| {
                a.row(r)
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_nan())
                    .fold(Condition::new(), |c, (i, &v)| match noise {
                        None => c.known(i, v),
                        Some(s) => c.observed(i, v, s),
                    })
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffusion_models::condition::Cell;

    fn args() -> ConditionArgs {
        ConditionArgs::default()
    }

    #[test]
    fn options_become_conditions() {
        let a = ConditionArgs {
            known: Some("1=-0.5, 0=2".into()),
            ..args()
        };
        let c = a.resolve(3, Variable::Continuous, 10).unwrap().unwrap();
        assert_eq!(c.rows(), 1);
        assert_eq!(c.cell(7, 0), Cell::Known(2.0));
        assert_eq!(c.cell(7, 1), Cell::Known(-0.5));
        assert_eq!(c.cell(7, 2), Cell::Free);
        let a = ConditionArgs {
            observe: Some("1,0,1".into()),
            observe_noise: Some(0.1),
            known: Some("1=1".into()),
            ..args()
        };
        let c = a.resolve(3, Variable::Binary, 4).unwrap().unwrap();
        assert_eq!(c.cell(0, 0), Cell::Observed(1.0, 0.1));
        // the known value absorbs the observation of its coordinate
        assert_eq!(c.cell(0, 1), Cell::Known(1.0));
        assert!(args().resolve(3, Variable::Binary, 4).unwrap().is_none());
        // some coordinates: I=V pairs, or gaps in the list
        for text in ["2=1,0=0", "0,,1", "0,nan,1"] {
            let a = ConditionArgs {
                observe: Some(text.into()),
                observe_noise: Some(0.2),
                ..args()
            };
            let c = a.resolve(3, Variable::Binary, 4).unwrap().unwrap();
            assert_eq!(c.cell(0, 0), Cell::Observed(0.0, 0.2), "{text}");
            assert_eq!(c.cell(0, 1), Cell::Free, "{text}");
            assert_eq!(c.cell(0, 2), Cell::Observed(1.0, 0.2), "{text}");
        }
    }

    #[test]
    fn files_give_a_condition_per_sample() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("known.csv");
        std::fs::write(&p, "x0,x1\n0.5,nan\nnan,nan\n-1,2\n").unwrap();
        let a = ConditionArgs {
            known_file: Some(p.clone()),
            observe: Some("0,0".into()),
            observe_noise: Some(0.3),
            ..args()
        };
        let c = a.resolve(2, Variable::Continuous, 3).unwrap().unwrap();
        assert_eq!(c.rows(), 3);
        assert_eq!(c.cell(0, 0), Cell::Known(0.5));
        assert_eq!(c.cell(0, 1), Cell::Observed(0.0, 0.3));
        assert_eq!(c.cell(1, 0), Cell::Observed(0.0, 0.3));
        assert_eq!(c.cell(2, 1), Cell::Known(2.0));
        // three rows cannot condition four samples
        let err = a.resolve(2, Variable::Continuous, 4).unwrap_err();
        assert!(err.contains("3 rows for 4 samples"), "{err}");
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        let cases = [
            (
                ConditionArgs {
                    known: Some("3".into()),
                    ..args()
                },
                "expected I=V",
            ),
            (
                ConditionArgs {
                    known: Some("5=1".into()),
                    ..args()
                },
                "coordinate 5",
            ),
            (
                ConditionArgs {
                    observe: Some("1,2".into()),
                    ..args()
                },
                "need --observe-noise",
            ),
            (
                ConditionArgs {
                    observe: Some("1".into()),
                    observe_noise: Some(0.1),
                    ..args()
                },
                "has 1 values",
            ),
            (
                ConditionArgs {
                    observe_noise: Some(0.1),
                    ..args()
                },
                "needs --observe",
            ),
            (
                ConditionArgs {
                    observe: Some("1,x".into()),
                    observe_noise: Some(0.1),
                    ..args()
                },
                "not a number",
            ),
        ];
        for (a, want) in cases {
            let err = a.resolve(2, Variable::Continuous, 1).unwrap_err();
            assert!(err.contains(want), "{err} (wanted {want})");
            assert!(!err.contains('\n'));
        }
    }
}
