//! `evaluate-conditional` on image runs: completions of held-out images (inpainting, denoising)
//! measured against the truth: the filled pixels' error, the known pixels' largest change, and
//! how often a k-nearest-neighbour classifier gives a completion its image's label.

use std::path::Path;

use burn::tensor::Device;
use diffusion_data::Array2;
use diffusion_data::baselines::knn_labels;
use diffusion_models::completion::{CompletionError, TaskImages};
use diffusion_models::data::streams;
use diffusion_models::{Diffusion, Network, ReverseModel, RunDir, RunManifest};
use serde::Serialize;

use diffusion_models::sampling::Sampler;

use crate::args::{ConditionArgs, EvaluateConditionalArgs};
use crate::sample::draw_given;

/// Neighbours that vote on a completion's label.
const KNN: usize = 10;

/// The most chains an evaluation of image completions runs.
const MAX_CHAINS: usize = 1 << 16;

/// What `evaluate-conditional` reports for image completions.
#[derive(Debug, Serialize)]
struct ImageCompletions {
    /// `inpainting, MASK` or `denoising, noise S`.
    task: String,
    /// Images completed.
    images: usize,
    /// Completions of each (the particles of each image's system with --resample, else 1).
    completions_per_image: usize,
    /// Draws whose mean each completion is (--average; 1: the completions are draws).
    averaged_draws: usize,
    /// With --average: the single draws' mean squared error over the filled pixels and
    /// k-NN label accuracy, averaged over the passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    draw_mse: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    draw_label_accuracy: Option<f64>,
    /// The chain that drew them.
    sampler: String,
    #[serde(flatten)]
    error: CompletionError,
    /// The peak the PSNR is taken against (the data's range).
    peak: f64,
    /// The share of completions whose k-NN label is their image's label.
    #[serde(skip_serializing_if = "Option::is_none")]
    label_accuracy: Option<f64>,
    /// The same classifier on the true images: the most a completion can reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    truth_label_accuracy: Option<f64>,
}

/// Runs `evaluate-conditional` on an image run.
pub fn cmd_evaluate_images(
    a: &EvaluateConditionalArgs,
    run: &RunDir,
    manifest: &RunManifest,
    model: &ReverseModel<Network>,
    device: &Device,
) -> Result<(), String> {
    let task = a.condition.test_task(manifest, run, a.seed)?.ok_or(
        "on image runs, evaluate-conditional takes --from-test N with --mask or --noisy-test",
    )?;
    let scorer = read_label_pair(a)?
        .map(|labels| LabelScorer::new(manifest, run, &task, labels))
        .transpose()?;
    let images = task.len();
    let bound = manifest.bound_of(model).map_err(|e| e.to_string())?;
    // resampled, each image is a particle system of --particles chains, all of them scored
    let per = if a.condition.resample { a.particles } else { 1 };
    let chains = chain_count(images, per)?;
    let peak = peak(manifest);
    let average = a.condition.average.unwrap_or(1);
    // with --average, each pass's draws scored on their own as well
    let (mut draw_mse, mut draw_labels) = (0.0, 0.0);
    let mut score_draws = |draws: &[f32]| -> Result<(), String> {
        draw_mse += CompletionError::of(&task, draws, peak).mse / average as f64;
        if let Some(scorer) = &scorer {
            draw_labels += scorer.score(draws) / average as f64;
        }
        Ok(())
    };
    let completions = complete(
        &a.condition,
        &task,
        &bound,
        &a.sampler.sampler()?,
        (manifest, model, device),
        (chains, a.seed, a.particles),
        &mut score_draws,
    )?;
    let error = CompletionError::of(&task, &completions, peak);
    let averaged = average > 1;
    let draw_mse = averaged.then_some(draw_mse);
    let draw_label_accuracy = (averaged && scorer.is_some()).then_some(draw_labels);
    let label_accuracy = scorer.as_ref().map(|s| s.score(&completions));
    let truth_label_accuracy = scorer.as_ref().map(|s| s.score(&task.truth));
    let report = ImageCompletions {
        task: task_description(&a.condition),
        images,
        completions_per_image: per,
        averaged_draws: average,
        draw_mse,
        draw_label_accuracy,
        sampler: sampler_description(a, &bound)?,
        error,
        peak,
        label_accuracy,
        truth_label_accuracy,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report).expect("serialisable"));
        return Ok(());
    }
    print_image_completions(&report);
    Ok(())
}

/// The labels of the training images and of the held-out images, in order.
type Labels = (Vec<u8>, Vec<u8>);

/// The training and held-out labels of `--labels` and `--test-labels`, which go together;
/// `None` without them.
fn read_label_pair(a: &EvaluateConditionalArgs) -> Result<Option<Labels>, String> {
    match (&a.labels, &a.test_labels) {
        (Some(train), Some(test)) => Ok(Some((read_labels(train)?, read_labels(test)?))),
        (None, None) => Ok(None),
        _ => Err("--labels and --test-labels go together".into()),
    }
}

/// The chains that `per` completions of each of `images` images take, at most [`MAX_CHAINS`].
fn chain_count(images: usize, per: usize) -> Result<usize, String> {
    let chains = images.saturating_mul(per);
    if chains > MAX_CHAINS {
        return Err(format!(
            "--resample with --from-test {images} and --particles {per} (per image) makes \
             {chains} chains, more than {MAX_CHAINS}: give fewer particles, e.g. --particles 8"
        ));
    }
    Ok(chains)
}

/// The report's task: `inpainting, MASK unknown` or `denoising, noise S`.
fn task_description(condition: &ConditionArgs) -> String {
    match (&condition.mask, condition.noisy_test) {
        (Some(mask), _) => format!("inpainting, {mask} unknown"),
        (_, Some(s)) => format!("denoising, noise {s}"),
        _ => String::new(),
    }
}

/// The report's chain: `respaced, K steps`, `DDIM, K steps, eta E` or `every step, T = T`.
fn sampler_description(a: &EvaluateConditionalArgs, bound: &Diffusion) -> Result<String, String> {
    let chain = match a.sampler.sampler()? {
        Sampler::Respaced(k) => format!("respaced, {k} steps"),
        Sampler::Ddim(o) => format!("DDIM, {} steps, eta {}", o.steps, o.eta),
        Sampler::Ancestral => format!("every step, T = {}", bound.steps()),
    };
    let renoised = crate::condition::renoised_note(a.condition.renoising());
    Ok(format!("{chain}{renoised}"))
}

/// Prints an image-completion report as a table.
fn print_image_completions(report: &ImageCompletions) {
    let e = &report.error;
    println!(
        "images     = {} ({}; {})",
        report.images, report.task, report.sampler
    );
    println!(
        "MSE        = {:.2} over the filled pixels (PSNR {:.2} dB, peak {})",
        e.mse, e.psnr_db, report.peak
    );
    if let Some(input) = e.input_mse {
        println!(
            "input MSE  = {input:.2} (the noisy observations; the completions' is {:.3} of it)",
            e.mse / input
        );
    } else {
        println!(
            "known      = largest change {} (0: held exactly)",
            e.known_max_change
        );
    }
    if let (Some(acc), Some(truth)) = (report.label_accuracy, report.truth_label_accuracy) {
        println!(
            "labels     = {acc:.4} of completions get their image's label from {KNN}-NN on the \
             training images (the true images: {truth:.4})"
        );
    }
    if let Some(mse) = report.draw_mse {
        let labels = report
            .draw_label_accuracy
            .map(|l| format!(", labels {l:.4}"))
            .unwrap_or_default();
        println!(
            "draws      = each completion the mean of {} draws; the single draws: MSE {mse:.2}{labels}",
            report.averaged_draws
        );
    }
}

/// `n` completions of `task`'s images (sample r of image r mod N) as `condition` says, through
/// `sampler`'s chain, as pixels in the data's units; with `--average K` each the mean of K
/// passes' draws, `each` seeing every pass's draws (as pixels) first.
pub fn complete(
    condition: &ConditionArgs,
    task: &TaskImages,
    bound: &Diffusion,
    sampler: &Sampler,
    (manifest, model, device): (&RunManifest, &ReverseModel<Network>, &Device),
    (n, seed, particles): (usize, u64, usize),
    each: &mut crate::sample::EachPass<'_>,
) -> Result<Vec<f32>, String> {
    let given = condition
        .resolve_with(manifest, bound.variable(), n, Some(task))?
        .ok_or("a --from-test condition")?;
    let mut rng = diffusion_data::rng(seed, streams::SAMPLE);
    let mut as_pixels = |draws: &[f32]| {
        let mut draws = draws.to_vec();
        manifest.to_data_units(&mut draws);
        manifest.to_pixels(&mut draws);
        each(&draws)
    };
    let mut completions = draw_given(
        bound,
        sampler,
        &given,
        (manifest, model, device),
        n,
        &mut rng,
        particles,
        (condition.average.unwrap_or(1), &mut as_pixels),
    )?;
    manifest.to_data_units(&mut completions);
    manifest.to_pixels(&mut completions);
    Ok(completions)
}

/// The peak of the PSNR: 1 for bits, 255 for data within 8 bits, else the training rows'
/// range.
fn peak(manifest: &RunManifest) -> f64 {
    if manifest.config.diffusion.process == diffusion_models::config::ProcessKind::Binomial {
        return 1.0;
    }
    let range = manifest.standardization.as_ref().and_then(|s| {
        let bin = if s.dequantize { 1.0 } else { 0.0 };
        s.range.map(|[lo, hi]| (lo, hi - bin))
    });
    match range {
        Some((lo, hi)) if lo < 0.0 || hi > 255.0 => hi - lo,
        _ => 255.0,
    }
}

fn read_labels(path: &Path) -> Result<Vec<u8>, String> {
    let a = diffusion_data::idx::read(path).map_err(|e| e.to_string())?;
    if a.dims.len() != 1 {
        return Err(format!(
            "{}: labels are an IDX file of rank 1, this one has dimensions {:?}",
            path.display(),
            a.dims
        ));
    }
    Ok(a.data)
}

/// The k-NN classifier that labels completions: the run's training images with `--labels`,
/// read and checked once, scored against `--test-labels` (the held-out images' labels, in
/// order).
struct LabelScorer {
    train: Array2,
    train_labels: Vec<u8>,
    test_labels: Vec<u8>,
    /// The held-out images completed: row r completes image r mod `images`.
    images: usize,
}

impl LabelScorer {
    fn new(
        manifest: &RunManifest,
        run: &RunDir,
        task: &TaskImages,
        (train_labels, test_labels): Labels,
    ) -> Result<Self, String> {
        let (train, _) =
            diffusion_models::setup::file_rows(manifest, run).map_err(|e| e.to_string())?;
        let test_file = matches!(
            &manifest.config.data,
            diffusion_models::DataConfig::File {
                test_path: Some(_),
                ..
            }
        );
        if !test_file {
            return Err(
                "--test-labels needs a run evaluated on a test file (data.test_path): a seeded \
                 split of the training file has no labels in order"
                    .into(),
            );
        }
        if train.rows != train_labels.len() {
            return Err(format!(
                "--labels has {} labels for the run's {} training images",
                train_labels.len(),
                train.rows
            ));
        }
        let images = task.len();
        if test_labels.len() < images {
            return Err(format!(
                "--test-labels has {} labels for {images} held-out images",
                test_labels.len()
            ));
        }
        Ok(LabelScorer {
            train,
            train_labels,
            test_labels,
            images,
        })
    }

    /// The share of `rows` (row r completing image r mod N) whose label is their image's.
    fn score(&self, rows: &[f32]) -> f64 {
        let got = knn_labels(
            &self.train.data,
            &self.train_labels,
            rows,
            self.train.cols,
            KNN,
        );
        let right = got
            .iter()
            .enumerate()
            .filter(|&(r, l)| *l == self.test_labels[r % self.images])
            .count();
        right as f64 / got.len().max(1) as f64
    }
}
