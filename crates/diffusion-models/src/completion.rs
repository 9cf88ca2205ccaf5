//! Completing held-out images, as the paper's code shows them: inpainting (a region unknown, the
//! rest of the image held) and denoising (every pixel seen through Gaussian noise), each as a
//! per-image [`Condition`] for the conditioned samplers (paper section 2.5), with the figures
//! that measure a completion against the truth.

use std::str::FromStr;

use diffusion_data::ImageShape;
use rand::Rng as _;
use rand_distr::StandardNormal;

use crate::condition::Condition;
use crate::evaluate::heldout_rows;
use crate::run::{RunDir, RunError, RunManifest};

/// The region of an image that inpainting leaves unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// The left half of the columns (the paper's picture: the right half kept).
    LeftHalf,
    /// The right half of the columns.
    RightHalf,
    /// The top half of the rows.
    TopHalf,
    /// The bottom half of the rows.
    BottomHalf,
    /// A centred square of this side.
    Center(usize),
}

impl FromStr for Mask {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "left-half" => Self::LeftHalf,
            "right-half" => Self::RightHalf,
            "top-half" => Self::TopHalf,
            "bottom-half" => Self::BottomHalf,
            other => match other.strip_prefix("center:") {
                Some(side) => match side.parse::<usize>() {
                    Ok(side) if side > 0 => Self::Center(side),
                    _ => return Err(format!("mask {s:?}: center:S needs a side S >= 1")),
                },
                None => {
                    return Err(format!(
                        "mask {s:?}: expected left-half, right-half, top-half, bottom-half or \
                         center:S"
                    ));
                }
            },
        })
    }
}

impl Mask {
    /// Whether each value of an image of `shape` (channel-first, row-major) is unknown.
    pub fn hidden(&self, shape: ImageShape) -> Result<Vec<bool>, String> {
        let (h, w) = (shape.height, shape.width);
        if let Self::Center(side) = *self
            && (side > h || side > w)
        {
            return Err(format!(
                "mask center:{side} is larger than the run's {h}x{w} images"
            ));
        }
        let inside = |y: usize, x: usize| match *self {
            Self::LeftHalf => x < w / 2,
            Self::RightHalf => x >= w / 2,
            Self::TopHalf => y < h / 2,
            Self::BottomHalf => y >= h / 2,
            Self::Center(side) => {
                let (top, left) = ((h - side) / 2, (w - side) / 2);
                (top..top + side).contains(&y) && (left..left + side).contains(&x)
            }
        };
        Ok((0..shape.len())
            .map(|i| {
                let p = i % (h * w);
                inside(p / w, p % w)
            })
            .collect())
    }
}

/// What is known of each held-out image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ImageTask {
    /// The masked region unknown, every other value known exactly.
    Inpaint(Mask),
    /// Every value observed through N(0, noise^2) in the data's units.
    Denoise {
        /// The observations' standard deviation.
        noise: f64,
    },
}

/// The first images of a run's held-out set with what a task knows of them, in the data's units.
#[derive(Debug, Clone)]
pub struct TaskImages {
    /// The images as they are (`[images, d]`).
    pub truth: Vec<f32>,
    /// What the sampler is given: the images with NaN where unknown (inpainting), or their noisy
    /// observations (denoising).
    pub input: Vec<f32>,
    /// Which values a completion has to fill (all of them when denoising).
    pub hidden: Vec<bool>,
    /// One condition per image, in the data's units (map them with
    /// `Factor::standardized` for the model, which takes a dequantised pixel's value to its
    /// bin's centre).
    pub conditions: Vec<Condition>,
}

impl TaskImages {
    /// The first `images` held-out images of an image run and `task`'s view of them; the
    /// denoising noise is drawn from `seed`.
    pub fn of_run(
        manifest: &RunManifest,
        run: &RunDir,
        task: ImageTask,
        images: usize,
        seed: u64,
    ) -> Result<Self, RunError> {
        let invalid = |message: String| RunError::Corrupt {
            path: run.file("config.json").display().to_string(),
            message,
        };
        let shape = manifest
            .image
            .ok_or_else(|| invalid("masks and noisy test images are for image runs".into()))?;
        let d = shape.len();
        let truth = heldout_rows(manifest, run, images)?;
        let count = truth.len() / d;
        if count < images {
            return Err(invalid(format!(
                "the run has {count} held-out images, {images} were asked for"
            )));
        }
        let (hidden, input) = match task {
            ImageTask::Inpaint(mask) => {
                let hidden = mask.hidden(shape).map_err(invalid)?;
                let input: Vec<f32> = truth
                    .chunks_exact(d)
                    .flat_map(|row| {
                        row.iter()
                            .zip(&hidden)
                            .map(|(&v, &h)| if h { f32::NAN } else { v })
                    })
                    .collect();
                (hidden, input)
            }
            ImageTask::Denoise { noise } => {
                if !(noise.is_finite() && noise > 0.0) {
                    return Err(invalid(format!("the noise {noise} must be > 0")));
                }
                let mut rng = diffusion_data::rng(seed, crate::data::streams::CONDITION);
                let input = truth
                    .iter()
                    .map(|&v| {
                        let e: f64 = rng.sample(StandardNormal);
                        (v as f64 + noise * e) as f32
                    })
                    .collect();
                (vec![true; d], input)
            }
        };
        let conditions = input
            .chunks_exact(d)
            .map(|row| {
                row.iter().enumerate().filter(|(_, v)| !v.is_nan()).fold(
                    Condition::new(),
                    |c, (i, &v)| match task {
                        ImageTask::Inpaint(_) => c.known(i, v),
                        ImageTask::Denoise { noise } => c.observed(i, v, noise),
                    },
                )
            })
            .collect();
        Ok(Self {
            truth,
            input,
            hidden,
            conditions,
        })
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.conditions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }
}

/// How close completions are to the truth, over the values they had to fill, in the data's
/// units.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompletionError {
    /// Mean squared error of the filled values.
    pub mse: f64,
    /// 10 log10(peak^2 / mse), peak the data's range (255 for 8-bit images).
    pub psnr_db: f64,
    /// The same mean squared error for the input itself (the noisy observations when
    /// denoising; absent for inpainting, whose input has no values there).
    pub input_mse: Option<f64>,
    /// The largest change of a known value (inpainting; 0 when they are held exactly).
    pub known_max_change: f64,
}

impl CompletionError {
    /// Completions `[m, d]` (sample r completes image r mod images) against `task`'s truth, with
    /// `peak` the data's range.
    pub fn of(task: &TaskImages, completions: &[f32], peak: f64) -> Self {
        let d = task.hidden.len();
        let images = task.len().max(1);
        let (mut squared, mut count, mut known_max, mut input_squared) = (0.0, 0usize, 0.0f64, 0.0);
        for (r, row) in completions.chunks_exact(d).enumerate() {
            let base = (r % images) * d;
            let truth = &task.truth[base..base + d];
            let input = &task.input[base..base + d];
            for i in 0..d {
                let diff = (row[i] - truth[i]) as f64;
                if task.hidden[i] {
                    squared += diff * diff;
                    count += 1;
                    if !input[i].is_nan() {
                        input_squared += ((input[i] - truth[i]) as f64).powi(2);
                    }
                } else {
                    known_max = known_max.max(diff.abs());
                }
            }
        }
        let mse = squared / count.max(1) as f64;
        let denoising = task.input.iter().all(|v| !v.is_nan());
        Self {
            mse,
            psnr_db: 10.0 * (peak * peak / mse).log10(),
            input_mse: denoising.then(|| input_squared / count.max(1) as f64),
            known_max_change: known_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ImageShape = ImageShape {
        channels: 1,
        height: 4,
        width: 6,
    };

    #[test]
    fn masks_hide_their_region() {
        let count = |m: Mask| m.hidden(SHAPE).unwrap().iter().filter(|&&h| h).count();
        let left = Mask::LeftHalf.hidden(SHAPE).unwrap();
        // row 1: columns 0..3 hidden, 3..6 kept
        assert_eq!(&left[6..12], &[true, true, true, false, false, false]);
        assert_eq!(count(Mask::RightHalf), 12);
        let top = Mask::TopHalf.hidden(SHAPE).unwrap();
        assert!(top[..12].iter().all(|&h| h) && top[12..].iter().all(|&h| !h));
        assert_eq!(count(Mask::BottomHalf), 12);
        let centre = Mask::Center(2).hidden(SHAPE).unwrap();
        let at: Vec<usize> = (0..24).filter(|&i| centre[i]).collect();
        assert_eq!(at, vec![8, 9, 14, 15]);
        assert!(Mask::Center(5).hidden(SHAPE).is_err());
        // every channel alike
        let rgb = ImageShape {
            channels: 3,
            ..SHAPE
        };
        let m = Mask::LeftHalf.hidden(rgb).unwrap();
        assert_eq!(&m[..24], &m[24..48]);
        assert_eq!(&m[..24], &m[48..]);
    }

    #[test]
    fn masks_parse_by_name() {
        assert_eq!("left-half".parse::<Mask>(), Ok(Mask::LeftHalf));
        assert_eq!("center:14".parse::<Mask>(), Ok(Mask::Center(14)));
        for bad in ["left", "center:0", "center:x", ""] {
            let e = bad.parse::<Mask>().unwrap_err();
            assert!(e.contains("mask"), "{e}");
        }
    }

    #[test]
    fn completion_error_counts_the_filled_values() {
        let d = SHAPE.len();
        let hidden = Mask::TopHalf.hidden(SHAPE).unwrap();
        let truth: Vec<f32> = (0..2 * d).map(|i| (i % 7) as f32).collect();
        let input: Vec<f32> = truth
            .iter()
            .enumerate()
            .map(|(i, &v)| if hidden[i % d] { f32::NAN } else { v })
            .collect();
        let task = TaskImages {
            truth: truth.clone(),
            input,
            hidden,
            conditions: vec![Condition::new(); 2],
        };
        // four completions (two per image): the filled values off by 2, one known value by 1
        let mut completions: Vec<f32> = truth.iter().chain(&truth).copied().collect();
        for (i, v) in completions.iter_mut().enumerate() {
            if i % d < 12 {
                *v += 2.0;
            }
        }
        completions[3 * d + 20] += 1.0;
        let e = CompletionError::of(&task, &completions, 255.0);
        assert_eq!(e.mse, 4.0);
        assert!((e.psnr_db - 10.0 * (255.0f64 * 255.0 / 4.0).log10()).abs() < 1e-12);
        assert_eq!(e.known_max_change, 1.0);
        assert_eq!(e.input_mse, None);
    }
}
