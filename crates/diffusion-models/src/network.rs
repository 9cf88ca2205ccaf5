//! What a reverse network is, and the model trained around it.
//!
//! A [`ReverseNetwork`] is any Burn module that maps (x_t `[n, d]`, t `[n]`) to the reverse
//! kernel's raw outputs: `2d` values for Gaussian diffusion (`[z_mu, z_sigma]`, read by the
//! run's [`ReverseParametrization`](diffusion_core::ReverseParametrization)) and `d` logits for
//! binomial diffusion. The bound, evaluation, sampling and training take any such network; this
//! crate's own ([`crate::model`]) are three implementations of it.
//!
//! A [`ReverseModel`] is what training optimises: the network and, for the `learned` beta
//! schedule, the trainable betas ([`LearnedBetas`]), so that one optimizer and one checkpoint
//! cover both.
//!
//! ```
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::{Device, Int, Tensor};
//! use diffusion_models::ReverseNetwork;
//!
//! /// x_t and t / T in, 2 x 2 outputs (a 2-D Gaussian run).
//! #[derive(Module, Debug)]
//! struct Tiny {
//!     layer: Linear,
//!     steps: usize,
//! }
//!
//! impl ReverseNetwork for Tiny {
//!     fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
//!         let n = t.dims()[0];
//!         let time = t.float().reshape([n, 1]) / self.steps as f64;
//!         self.layer.forward(Tensor::cat(vec![x_t, time], 1))
//!     }
//! }
//!
//! let device = Device::flex();
//! let net = Tiny { layer: LinearConfig::new(3, 4).init(&device), steps: 40 };
//! let z = net.forward_at(Tensor::zeros([5, 2], &device), 7);
//! assert_eq!(z.dims(), [5, 4]);
//! ```

use burn::module::{Module, ModuleDisplay, Param};
use burn::tensor::activation;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// A reverse-process network: (x_t, t) to the reverse kernel's raw outputs.
pub trait ReverseNetwork: Module + ModuleDisplay {
    /// `x_t` is `[n, d]`, `t` is `[n]` (1-based steps); returns `[n, outputs]`: `2d` for
    /// Gaussian diffusion, `d` for binomial diffusion.
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2>;

    /// [`forward`](Self::forward) with every row at step `t` (the reverse chain when sampling).
    /// Networks with per-step parameters override it to use them once, broadcast over the rows.
    fn forward_at(&self, x_t: Tensor<2>, t: usize) -> Tensor<2> {
        let n = x_t.dims()[0];
        let device = x_t.device();
        let steps = Tensor::from_data(TensorData::new(vec![t as i64; n], [n]), &device);
        self.forward(x_t, steps)
    }

    /// Whether training does better to cut each batch into parts, one a thread, each part's
    /// forward and backward pass on a thread of its own, the parts' gradients added after:
    /// the image networks, whose serial stretches between their parallel kernels would
    /// otherwise leave the other threads idle. The loss and its gradient are the batch's
    /// either way, to rounding.
    fn splits_batches(&self) -> bool {
        false
    }
}

/// `network.forward_at(x_t, t)`, as the reverse chain calls it. With a network that
/// [splits batches](ReverseNetwork::splits_batches), on flex with several threads, the rows are
/// cut into a part a thread and each part's forward pass runs on a thread of its own, the
/// outputs put back in the rows' order: the image networks compute each image on its own, so
/// every row's output is the uncut call's, bit for bit (tested).
pub fn forward_at_rows<N: ReverseNetwork>(network: &N, x_t: Tensor<2>, t: usize) -> Tensor<2> {
    let n = x_t.dims()[0];
    let parts = row_parts(network, &x_t.device(), n);
    if parts < 2 {
        return network.forward_at(x_t, t);
    }
    let jobs: Vec<_> = (0..parts)
        .map(|k| {
            let (from, to) = (n * k / parts, n * (k + 1) / parts);
            (network.clone(), x_t.clone().narrow(0, from, to - from))
        })
        .collect();
    let outs = diffusion_kernels::map_parallel(jobs, |(net, rows)| net.forward_at(rows, t));
    Tensor::cat(outs, 0)
}

/// Rows a part of a batch cut across threads holds at least ([`row_parts`]).
pub(crate) const MIN_PART_ROWS: usize = 8;

/// Into how many parts `network`'s `rows` rows on `device` are cut, one a thread
/// ([`forward_at_rows`], and the trainer's batches): a part a thread, each of at least
/// [`MIN_PART_ROWS`], for a network that [splits batches](ReverseNetwork::splits_batches) on
/// flex; 1 otherwise.
pub(crate) fn row_parts<N: ReverseNetwork>(network: &N, device: &Device, rows: usize) -> usize {
    if network.splits_batches() && diffusion_kernels::fused_device(device) {
        diffusion_kernels::worker_threads()
            .min(rows / MIN_PART_ROWS)
            .max(1)
    } else {
        1
    }
}

/// The trained object: a network and, with the `learned` schedule, its trainable betas.
#[derive(Module, Debug)]
pub struct ReverseModel<N: Module> {
    /// The reverse network.
    pub network: N,
    /// The trainable betas of the `learned` schedule (none for a fixed schedule).
    pub schedule: Option<LearnedBetas>,
}

impl<N: ReverseNetwork> ReverseModel<N> {
    /// A model with a fixed beta schedule.
    pub fn new(network: N) -> Self {
        Self {
            network,
            schedule: None,
        }
    }

    /// Adds trainable betas starting from `betas` (the `learned` schedule).
    pub fn with_learned_schedule(mut self, betas: &[f64], device: &Device) -> Self {
        self.schedule = Some(LearnedBetas::new(betas, device));
        self
    }

    /// The learned betas, when the model learns its schedule.
    pub fn learned_schedule(&self) -> Option<&LearnedBetas> {
        self.schedule.as_ref()
    }
}

/// The trainable betas of the `learned` schedule: b_1 fixed, b_t = sigmoid(w_t) for t = 2..T.
#[derive(Module, Debug)]
pub struct LearnedBetas {
    /// w_2..w_T, `[T - 1]`.
    logits: Param<Tensor<1>>,
    /// b_1.
    #[module(skip)]
    beta_1: f64,
}

impl LearnedBetas {
    /// Starts from `betas` (b_1..b_T, each in (0, 1)).
    pub fn new(betas: &[f64], device: &Device) -> Self {
        let logits: Vec<f32> = betas[1..]
            .iter()
            .map(|&b| (b / (1.0 - b)).ln() as f32)
            .collect();
        let n = logits.len();
        Self {
            logits: Param::from_tensor(Tensor::from_data(TensorData::new(logits, [n]), device)),
            beta_1: betas[0],
        }
    }

    /// `[first, rest...]`, `first` being b_1's value of a per-step quantity.
    fn after_first(&self, first: f64, rest: Tensor<1>) -> Tensor<1> {
        let first = Tensor::<1>::from_floats([first as f32], &rest.device());
        Tensor::cat(vec![first, rest], 0)
    }

    /// b_1..b_T, `[T]`.
    pub fn betas(&self) -> Tensor<1> {
        self.after_first(self.beta_1, activation::sigmoid(self.logits.val()))
    }

    /// ln(1 - b_t) for t = 1..T, `[T]` (computed as log_sigmoid(-w_t): exact for small b_t).
    pub fn log_one_minus_betas(&self) -> Tensor<1> {
        self.after_first(
            (1.0 - self.beta_1).ln(),
            activation::log_sigmoid(self.logits.val().neg()),
        )
    }

    /// logit(b_t) for t = 1..T, `[T]`.
    pub fn logit_betas(&self) -> Tensor<1> {
        let b1 = self.beta_1;
        self.after_first((b1 / (1.0 - b1)).ln(), self.logits.val())
    }

    /// The gradient of the free parameters w_2..w_T, `[T - 1]`, from an autodiff backward pass.
    pub fn logits_grad(&self, grads: &burn::tensor::Gradients) -> Option<Tensor<1>> {
        self.logits.val().grad(grads)
    }

    /// The current b_1..b_T on the host, in f64 (b_t computed from w_t in f64).
    pub fn host_betas(&self) -> Vec<f64> {
        let data = self.logits.val().into_data().convert::<f32>();
        let logits = data.as_slice::<f32>().expect("f32 data");
        std::iter::once(self.beta_1)
            .chain(logits.iter().map(|&w| 1.0 / (1.0 + (-(w as f64)).exp())))
            .collect()
    }
}
