//! Training with burn-train's `Learner` (cargo feature `burn-train`): its dashboard, metric
//! loggers, checkpointer and multi-device strategies, for any of our networks or your own.
//!
//! - [`LearnerModule`] is a [`ReverseModel`] with its [`Process`]: its `TrainStep` and
//!   `InferenceStep` return minus the Monte-Carlo bound K in bits per point (the same loss as
//!   [`crate::Trainer`]), as a `RegressionOutput` whose loss burn-train's `LossMetric` reads.
//! - [`BoundBatcher`] turns a batch of data rows into a [`TrainingBatch`]: t ~ U{first..T} and
//!   x_t ~ q(x_t | x_0) for each row, from its own seeded stream.
//! - [`rows_dataset`] makes burn-train's in-memory dataset of data rows, and [`rows_loader`] its
//!   data loader.
//!
//! What [`crate::Trainer`] gives that the Learner does not: data drawn fresh from a generator
//! every step (the Learner iterates over a fixed dataset in epochs), importance-sampled t, the
//! `learned` schedule, and a resume that ends bit for bit where an uninterrupted run would.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use burn::train::{InferenceStep, RegressionOutput, TrainOutput, TrainStep};
use diffusion_data::Rng;

use crate::network::{ReverseModel, ReverseNetwork};
use crate::process::{Objective, Process, TrainingBatch, training_batch};

/// A model and the process it reverses, as one module for burn-train's `Learner`.
#[derive(Module, Debug)]
pub struct LearnerModule<P: Process + Debug + 'static, N: ReverseNetwork> {
    /// The model being trained.
    pub model: ReverseModel<N>,
    /// The diffusion it reverses.
    #[module(skip)]
    pub process: P,
}

impl<P: Process + Debug + 'static, N: ReverseNetwork> LearnerModule<P, N> {
    /// Minus the Monte-Carlo K in bits per point of a batch, as burn-train's regression output.
    fn output(&self, batch: TrainingBatch<P::Rows>) -> RegressionOutput {
        let device = self
            .model
            .devices()
            .into_iter()
            .next()
            .unwrap_or_else(Device::flex);
        let tables = self.process.tables(&device);
        let loss = self
            .process
            .step_loss(&tables, &self.model, batch, Objective::BOUND, &device)
            .loss;
        // The bound has no prediction and target; the loss is what the metrics read.
        let none = Tensor::<2>::zeros([1, 1], &device);
        RegressionOutput::new(loss, none.clone(), none)
    }
}

impl<P, N> TrainStep for LearnerModule<P, N>
where
    P: Process + Debug + 'static,
    P::Rows: 'static,
    N: ReverseNetwork + 'static,
{
    type Input = TrainingBatch<P::Rows>;
    type Output = RegressionOutput;

    fn step(&self, batch: Self::Input) -> TrainOutput<RegressionOutput> {
        let output = self.output(batch);
        let grads = output.loss.backward();
        TrainOutput::new(self, grads, output)
    }
}

impl<P, N> InferenceStep for LearnerModule<P, N>
where
    P: Process + Debug + 'static,
    P::Rows: 'static,
    N: ReverseNetwork + 'static,
{
    type Input = TrainingBatch<P::Rows>;
    type Output = RegressionOutput;

    fn step(&self, batch: Self::Input) -> RegressionOutput {
        self.output(batch)
    }
}

/// Draws t and x_t for a batch of data rows, from its own seeded stream.
#[derive(Debug)]
pub struct BoundBatcher<P> {
    process: P,
    rng: Mutex<Rng>,
}

impl<P: Process> BoundBatcher<P> {
    /// A batcher for `process` drawing from `rng`.
    pub fn new(process: P, rng: Rng) -> Self {
        Self {
            process,
            rng: Mutex::new(rng),
        }
    }
}

impl<P: Process> Batcher<Vec<f32>, TrainingBatch<P::Rows>> for BoundBatcher<P> {
    fn batch(&self, items: Vec<Vec<f32>>, _device: &Device) -> TrainingBatch<P::Rows> {
        let x0: Vec<f32> = items.into_iter().flatten().collect();
        // a poisoned lock only means another batch panicked; the stream itself is intact
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        training_batch(&self.process, &x0, &mut rng)
    }
}

/// burn-train's in-memory dataset of the rows of `points` (row-major, `d` values a row).
pub fn rows_dataset(points: &[f32], d: usize) -> InMemDataset<Vec<f32>> {
    InMemDataset::new(points.chunks_exact(d).map(<[f32]>::to_vec).collect())
}

/// burn-train's data loader over the rows of `points` (`d` values a row): batches of
/// `batch_size` rows, their t and x_t drawn from `rng` ([`BoundBatcher`]), for `device`.
pub fn rows_loader<P>(
    process: P,
    points: &[f32],
    d: usize,
    batch_size: usize,
    rng: Rng,
    device: &Device,
) -> Arc<dyn DataLoader<TrainingBatch<P::Rows>>>
where
    P: Process + 'static,
    P::Rows: Clone + Debug + 'static,
{
    DataLoaderBuilder::new(BoundBatcher::new(process, rng))
        .batch_size(batch_size)
        .set_device(device.clone())
        .build(rows_dataset(points, d))
}
