//! Pictures of grey images: the image trajectory, held-out images beside samples, and the
//! completions of inpainting and denoising.

use std::path::Path;

use diffusion_models::evaluate::{SAMPLE_CHUNK_ROWS, heldout_rows};
use diffusion_models::{RunDir, RunManifest};
use diffusion_plot::{ImagePanel, ImagePanels, save};

use super::Plot;
use crate::args::{ConditionArgs, What};

/// Completions drawn for each image by `--what inpainting` and `denoising`.
const COMPLETIONS_SHOWN: usize = 4;

impl Plot {
    /// `--what trajectory` of grey images: one row per chain with x_t for each step t, the
    /// forward q(x_t) from held-out images above the reverse p(x_t) from the model.
    pub(super) fn image_trajectory(&mut self, stem: &Path) -> Result<(), String> {
        let (width, height) = self.image.expect("matched");
        let d = self.d;
        let chains = self.a.rows.clamp(1, 10);
        let data = self.heldout(chains)?;
        let n = data.len() / d;
        let mut forward: Vec<(usize, Vec<f32>)> = self
            .steps
            .iter()
            .map(|&t| (t, self.bound.forward_sample(&data, t, &mut self.rng)))
            .collect();
        let mut reverse = self.bound.trajectory(
            &self.model.network,
            n,
            &self.steps,
            &mut self.rng,
            &self.device,
        );
        let manifest = &self.manifest;
        let (lo, hi) = pixel_range(
            manifest,
            &heldout_rows(manifest, &self.run, 100).map_err(|e| e.to_string())?,
        );
        let panel = |title: &str, snapshots: &mut Vec<(usize, Vec<f32>)>| {
            snapshots.sort_by_key(|(t, _)| *t);
            for (_, x) in snapshots.iter_mut() {
                manifest.to_data_units(x);
            }
            // one row per chain, t increasing to the right
            let images = (0..n)
                .flat_map(|c| {
                    snapshots
                        .iter()
                        .map(move |(_, x)| x[c * d..(c + 1) * d].to_vec())
                })
                .collect();
            ImagePanel {
                title: title.into(),
                images,
            }
        };
        let ts: Vec<String> = self.steps.iter().map(|t| t.to_string()).collect();
        let name = &self.name;
        let files = save(
            &ImagePanels {
                title: format!(
                    "{name}: x_t for t = {} (left to right), forward from held-out images and reverse from the model",
                    ts.join(", ")
                ),
                panels: vec![
                    panel("forward q(x_t)", &mut forward),
                    panel("reverse p(x_t)", &mut reverse),
                ],
                width,
                height,
                columns: self.steps.len(),
                range: (lo, hi),
            },
            stem,
        );
        self.keep(files)
    }

    /// `--what samples` of grey images: --rows held-out images beside as many samples (or the
    /// first rows of `--from`), 10 a line.
    pub(super) fn image_samples(&mut self, stem: &Path) -> Result<(), String> {
        let (width, height) = self.image.expect("matched");
        let d = self.d;
        // in the data's own units: the held-out rows as read, the samples mapped back
        let data =
            heldout_rows(&self.manifest, &self.run, self.a.rows).map_err(|e| e.to_string())?;
        let drawn = match &self.a.from {
            Some(file) => {
                let rows = diffusion_data::io::read(file).map_err(|e| e.to_string())?;
                if rows.cols != d {
                    return Err(format!(
                        "{}: rows of {} values, the run's images have {d}",
                        file.display(),
                        rows.cols
                    ));
                }
                rows.data[..self.a.rows.min(rows.rows) * d].to_vec()
            }
            None => {
                let mut drawn = self.bound.sample(
                    &self.model.network,
                    self.a.rows,
                    &mut self.rng,
                    &self.device,
                    self.manifest.chunk_rows(SAMPLE_CHUNK_ROWS),
                );
                self.manifest.to_data_units(&mut drawn);
                self.manifest.to_pixels(&mut drawn);
                drawn
            }
        };
        let (lo, hi) = pixel_range(&self.manifest, &data);
        let images = |v: &[f32]| v.chunks_exact(d).map(<[f32]>::to_vec).collect();
        let name = &self.name;
        let files = save(
            &ImagePanels {
                title: format!("{name}: held-out data and samples"),
                panels: vec![
                    ImagePanel {
                        title: "held-out data".into(),
                        images: images(&data),
                    },
                    ImagePanel {
                        title: "samples".into(),
                        images: images(&drawn),
                    },
                ],
                width,
                height,
                columns: 10,
                range: (lo, hi),
            },
            stem,
        );
        self.keep(files)
    }

    /// `--what inpainting` and `denoising`: one row per held-out image with the truth, the
    /// input (unknown pixels grey) and `COMPLETIONS_SHOWN` completions by the model.
    pub(super) fn completions(&mut self, what: What, stem: &Path) -> Result<(), String> {
        let (width, height) = self
            .image
            .ok_or("--what inpainting and denoising draw grey images")?;
        let (manifest, run, d, seed) = (&self.manifest, &self.run, self.d, self.a.seed);
        let task = completion_task(&self.a.condition, what, manifest, run)?;
        let rows = task.from_test.unwrap_or(8);
        let shown = task
            .test_task(manifest, run, seed)?
            .expect("--from-test set");
        let per = COMPLETIONS_SHOWN;
        let sampler = self.a.sampler.sampler()?;
        let drawn = crate::complete::complete(
            &task,
            &shown,
            &self.bound,
            &sampler,
            (manifest, &self.model, &self.device),
            (rows * per, seed, SAMPLE_CHUNK_ROWS),
            &mut |_| Ok(()),
        )?;
        let (lo, hi) = pixel_range(manifest, &shown.truth);
        let grey = (lo + hi) / 2.0;
        // one row per image: the truth, the input (unknown pixels grey), the completions
        let mut images = Vec::new();
        for r in 0..rows {
            let at = |v: &[f32], i: usize| v[i * d..(i + 1) * d].to_vec();
            images.push(at(&shown.truth, r));
            let mut input = at(&shown.input, r);
            input
                .iter_mut()
                .for_each(|v| *v = if v.is_nan() { grey } else { v.clamp(lo, hi) });
            images.push(input);
            // sample j * rows + r completes image r
            images.extend((0..per).map(|j| at(&drawn, j * rows + r)));
        }
        let what = match what {
            What::Inpainting => format!("{} unknown", task.mask.as_deref().unwrap_or("")),
            _ => format!("noise of sd {:.1}", task.noisy_test.unwrap_or(0.0)),
        };
        let name = &self.name;
        let averaged = match task.average {
            Some(k) if k > 1 => format!(", each the mean of {k} draws"),
            _ => String::new(),
        };
        let files = save(
            &ImagePanels {
                title: format!(
                    "{name}: held-out images, the input ({what}), and {per} completions each{averaged}"
                ),
                panels: vec![ImagePanel {
                    title: String::new(),
                    images,
                }],
                width,
                height,
                columns: 2 + per,
                range: (lo, hi),
            },
            stem,
        );
        self.keep(files)
    }
}

/// The condition of `--what inpainting` or `denoising`: the given `--from-test`, `--mask` and
/// `--noisy-test`, or their defaults (8 images; the left half unknown; noise of the data's own
/// standard deviation, a signal-to-noise ratio of 1).
fn completion_task(
    given: &ConditionArgs,
    what: What,
    manifest: &RunManifest,
    run: &RunDir,
) -> Result<ConditionArgs, String> {
    let mut task = given.clone();
    task.from_test = Some(given.from_test.unwrap_or(8));
    match what {
        What::Inpainting => {
            task.noisy_test = None;
            task.mask = Some(given.mask.clone().unwrap_or_else(|| "left-half".into()));
        }
        _ => {
            task.mask = None;
            let noise = match given.noisy_test {
                Some(s) => s,
                None => {
                    let rows = heldout_rows(manifest, run, 1000).map_err(|e| e.to_string())?;
                    pooled_sd(&rows)
                }
            };
            task.noisy_test = Some(noise);
        }
    }
    Ok(task)
}

/// The standard deviation of all values together.
fn pooled_sd(values: &[f32]) -> f64 {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    (values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

/// The values drawn white and black: 0 and 255 for 8-bit images, else the data's range.
fn pixel_range(manifest: &RunManifest, data: &[f32]) -> (f32, f32) {
    let lo = data.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = data.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if manifest.image.is_some() && lo >= 0.0 && hi <= 255.0 && hi > 16.0 {
        (0.0, 255.0)
    } else {
        (lo, hi)
    }
}
