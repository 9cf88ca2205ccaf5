//! The same Gaussian Swiss-roll training (presentation model, T = 100, Adam 1e-3, the
//! Monte-Carlo bound) through burn-train's `Learner` and through diffusion-models' own loop, on
//! the flex backend; prints steps/s of each. Usage: `cargo run --release -- [steps] [batch]`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::optim::lr_scheduler::constant::ConstantLr;
use burn::tensor::{Device, Tensor};
use burn::train::metric::LossMetric;
use burn::train::{
    InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
};
use diffusion_core::LN_2;
use diffusion_models::bound::{BoundBatch, GaussianBound};
use diffusion_models::training::TrainingData;
use diffusion_models::{ReverseMlp, RunConfig, RunDir, RunManifest};

const CONFIG: &str = include_str!("../../../configs/swiss_roll_presentation.toml");

#[derive(Module, Debug)]
struct Net {
    inner: ReverseMlp,
    #[module(skip)]
    bound: GaussianBound,
}

impl Net {
    fn loss(&self, batch: BoundBatch) -> Tensor<1> {
        let steps = self.bound.steps();
        let weight = (steps - 1) as f64 / LN_2;
        let constant = self.bound.diffusion.bound_constants().sum_bits();
        self.bound.kl_rows(&self.inner, batch).mean() * weight - constant
    }

    fn output(loss: Tensor<1>) -> RegressionOutput {
        let dummy = Tensor::<2>::zeros([1, 1], &loss.device());
        RegressionOutput::new(loss, dummy.clone(), dummy)
    }
}

impl TrainStep for Net {
    type Input = BoundBatch;
    type Output = RegressionOutput;
    fn step(&self, batch: BoundBatch) -> TrainOutput<RegressionOutput> {
        let loss = self.loss(batch);
        let grads = loss.backward();
        TrainOutput::new(self, grads, Net::output(loss))
    }
}

impl InferenceStep for Net {
    type Input = BoundBatch;
    type Output = RegressionOutput;
    fn step(&self, batch: BoundBatch) -> RegressionOutput {
        Net::output(self.loss(batch))
    }
}

/// Draws t ~ U{2..T} and x_t for a batch of points, as the project's loop does.
struct BoundBatcher {
    bound: GaussianBound,
    rng: Mutex<diffusion_data::Rng>,
}

impl Batcher<[f32; 2], BoundBatch> for BoundBatcher {
    fn batch(&self, items: Vec<[f32; 2]>, device: &Device) -> BoundBatch {
        use rand::Rng as _;
        let mut rng = self.rng.lock().expect("batcher rng");
        let steps = self.bound.steps();
        let ts: Vec<usize> = items.iter().map(|_| rng.random_range(2..=steps)).collect();
        let x0: Vec<f32> = items.iter().flatten().copied().collect();
        self.bound.prepare(&x0, &ts, &mut rng, device)
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let steps = args.first().copied().unwrap_or(500);
    let batch = args.get(1).copied().unwrap_or(1024);
    let mut config = RunConfig::from_toml(CONFIG).unwrap();
    config.train.steps = steps;
    config.train.batch_size = batch;
    config.train.log_every = steps;
    let manifest = RunManifest::new(config, 2, "flex");
    let diffusion_models::bound::Diffusion::Gaussian(bound) = manifest.bound().unwrap() else {
        unreachable!()
    };
    let device = Device::flex();
    let roll = diffusion_data::SwissRoll::new(0.5).unwrap();
    let dir = std::env::temp_dir().join(format!("burn-train-compare-{}", std::process::id()));

    // This project's loop.
    let own_run = |round: usize| {
        let run = RunDir::create(&dir.join(format!("own-{round}")), true).unwrap();
        let start = Instant::now();
        diffusion_models::train(
            &manifest,
            TrainingData::swiss_roll(roll, 0),
            &device,
            &run,
            None,
            &mut |_| {},
        )
        .unwrap();
        start.elapsed().as_secs_f64()
    };

    // burn-train's Learner: the same model, loss, optimizer and batch.
    let points: Vec<[f32; 2]> = roll
        .stream(0)
        .next_batch(steps * batch)
        .chunks(2)
        .map(|p| [p[0], p[1]])
        .collect();
    let batcher = |stream| BoundBatcher {
        bound: bound.clone(),
        rng: Mutex::new(diffusion_data::rng(0, stream)),
    };
    let learner_run = |round: usize| {
        let ad = device.clone().autodiff();
        ad.seed(0);
        let net = Net {
            inner: manifest.init_model(&ad).unwrap(),
            bound: bound.clone(),
        };
        let train_loader = DataLoaderBuilder::new(batcher(2))
            .batch_size(batch)
            .num_workers(1)
            .set_device(ad.clone())
            .build(InMemDataset::new(points.clone()));
        let valid_loader = DataLoaderBuilder::new(batcher(3))
            .batch_size(batch)
            .set_device(device.clone())
            .build(InMemDataset::new(points[..batch].to_vec()));
        let learner = Learner::new(net, AdamConfig::new().init(), ConstantLr::from(1e-3));
        let start = Instant::now();
        let result = SupervisedTraining::new(
            dir.join(format!("learner-{round}")),
            train_loader,
            valid_loader,
        )
        .metric_train_numeric(LossMetric::new())
        .num_epochs(1)
        .launch(learner);
        let seconds = start.elapsed().as_secs_f64();
        let _ = Arc::new(result.model);
        seconds
    };

    // Alternate, twice each, and keep each one's faster round (the first round also warms the
    // allocator and the thread pool).
    let (mut own, mut learner_s) = (f64::INFINITY, f64::INFINITY);
    for round in 0..2 {
        own = own.min(own_run(round));
        learner_s = learner_s.min(learner_run(round));
    }
    println!(
        "batch {batch}, {steps} steps: own loop {:.1} steps/s ({own:.2} s); burn-train Learner {:.1} steps/s ({learner_s:.2} s); ratio {:.2}",
        steps as f64 / own,
        steps as f64 / learner_s,
        own / learner_s
    );
    let _ = std::fs::remove_dir_all(&dir);
}
