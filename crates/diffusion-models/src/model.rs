//! The reverse-process network: an MLP on `x_t`, told the step t in one of two ways (SPEC
//! section 4):
//!
//! - `embedding`: a learned per-step vector added to every hidden layer, one shared readout (the
//!   presentation's Swiss-roll model with `hidden = [128, 128]`, softplus; the "tweaked" heartbeat
//!   model);
//! - `readout`: hidden layers shared across time and a separate readout per step (the paper's
//!   models: the heartbeat MLP 20 -> 50 -> 50 -> 50 with sigmoid units).
//!
//! With `kind = "rbf"` the hidden layer is instead the paper's Swiss-roll network: a normalised
//! radial-basis-function layer (one layer of `hidden[0]` units, 16 in the paper, shared across
//! time), with a readout per step.
//!
//! The output is `[z_mu, z_sigma]` (2d values) for Gaussian diffusion and one logit per bit (d
//! values) for binomial diffusion.
//!
//! A run with the `learned` beta schedule keeps its trainable betas in the network's record too
//! ([`LearnedBetas`]), so that one optimizer and one checkpoint cover both.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The hidden-unit nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// ln(1 + e^x), the presentation's choice.
    #[default]
    Softplus,
    /// max(0, x).
    Relu,
    /// tanh(x).
    Tanh,
    /// 1 / (1 + e^-x), the paper's heartbeat units.
    Sigmoid,
    /// x sigmoid(x).
    Silu,
}

/// softplus(x) = ln(1 + e^x), computed as -ln sigmoid(-x): Burn's `log_sigmoid` is one
/// backend op forward and one backward (no overflow for any x), and on flex it runs through
/// the vendored vectorised kernel (`vendor/burn-flex`), where the composition
/// max(x, 0) + ln(1 + e^-|x|) took seven element-wise passes forward and as many backward.
pub fn softplus(x: Tensor<2>) -> Tensor<2> {
    activation::log_sigmoid(x.neg()).neg()
}

impl Activation {
    fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Softplus => softplus(x),
            Self::Relu => activation::relu(x),
            Self::Tanh => activation::tanh(x),
            Self::Sigmoid => activation::sigmoid(x),
            Self::Silu => activation::silu(x),
        }
    }
}

/// How the network is told the step t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TimeConditioning {
    /// A learned per-step vector added to every hidden layer; one shared readout.
    #[default]
    Embedding,
    /// Hidden layers shared across time; a separate linear readout per step (the paper's).
    Readout,
    /// Fixed sinusoidal features of t/T (16 frequencies, geometric from 1 to T/2 cycles over
    /// the trajectory, as in Vaswani et al. 2017 and Ho et al. 2020), mapped by a learned linear
    /// layer into every hidden layer. Shares statistical strength across neighbouring steps,
    /// which matters when T is in the thousands.
    Sinusoidal,
}

/// The kind of hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Affine layers with the `activation`.
    #[default]
    Mlp,
    /// The paper's Swiss-roll network: one normalised radial-basis-function layer of
    /// `hidden[0]` units, `h_j(x) = exp(-|x - c_j|^2 / (2 s_j^2)) / sum_k exp(-|x - c_k|^2 /
    /// (2 s_k^2))`, with learned centres c_j and widths s_j, shared across time; needs
    /// `time = "readout"` (a readout per step) and one hidden width.
    Rbf,
}

/// Number of sinusoidal frequencies (each gives a sine and a cosine feature).
const FREQUENCIES: usize = 16;

/// The shape of the reverse network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Widths of the hidden layers.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// The hidden nonlinearity.
    #[serde(default)]
    pub activation: Activation,
    /// How the step t enters.
    #[serde(default)]
    pub time: TimeConditioning,
    /// Affine-and-activation layers or the paper's radial-basis-function layer.
    #[serde(default)]
    pub kind: ModelKind,
}

fn default_hidden() -> Vec<usize> {
    vec![128, 128]
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            hidden: default_hidden(),
            activation: Activation::default(),
            time: TimeConditioning::default(),
            kind: ModelKind::default(),
        }
    }
}

/// The initial width s_j of every radial basis function (data have unit variance per coordinate).
const RBF_INITIAL_WIDTH: f64 = 0.5;

impl ModelConfig {
    /// The number of parameters of [`init`](Self::init)'s network, computed without building it.
    pub fn parameter_count(&self, dim_in: usize, dim_out: usize, steps: usize) -> u128 {
        let (steps, dim_out) = (steps as u128 + 1, dim_out as u128);
        let mut width = dim_in as u128;
        let mut count = 0u128;
        for &h in &self.hidden {
            let h = h as u128;
            // an affine layer's weights and biases, or the RBF layer's centres and widths
            count += width * h + h;
            count += match self.time {
                TimeConditioning::Embedding => steps * h,
                TimeConditioning::Sinusoidal => 2 * FREQUENCIES as u128 * h + h,
                TimeConditioning::Readout => 0,
            };
            width = h;
        }
        count
            + match self.time {
                TimeConditioning::Readout => steps * (width * dim_out + dim_out),
                _ => width * dim_out + dim_out,
            }
    }

    /// A network from `dim_in` inputs to `dim_out` outputs for steps `t = 1..=steps`. The
    /// readout starts at zero, so with the `paper` parametrizations the untrained model is the
    /// forward kernel.
    pub fn init(&self, dim_in: usize, dim_out: usize, steps: usize, device: &Device) -> ReverseMlp {
        let mut layers = Vec::with_capacity(self.hidden.len());
        let mut time_embeddings = Vec::with_capacity(self.hidden.len());
        let mut time_projections = Vec::with_capacity(self.hidden.len());
        let mut width = dim_in;
        let mut rbf = None;
        for &h in &self.hidden {
            if self.kind == ModelKind::Rbf && rbf.is_none() {
                rbf = Some(RbfLayer {
                    centers: Param::from_tensor(Tensor::random(
                        [h, dim_in],
                        Distribution::Normal(0.0, 1.0),
                        device,
                    )),
                    log_width: Param::from_tensor(Tensor::full(
                        [h],
                        RBF_INITIAL_WIDTH.ln(),
                        device,
                    )),
                });
                width = h;
                continue;
            }
            layers.push(LinearConfig::new(width, h).init(device));
            if self.time == TimeConditioning::Embedding {
                time_embeddings.push(
                    EmbeddingConfig::new(steps + 1, h)
                        .with_initializer(Initializer::Normal {
                            mean: 0.0,
                            std: 0.1,
                        })
                        .init(device),
                );
            }
            if self.time == TimeConditioning::Sinusoidal {
                time_projections.push(LinearConfig::new(2 * FREQUENCIES, h).init(device));
            }
            width = h;
        }
        let (readout, step_readout) = match self.time {
            TimeConditioning::Embedding | TimeConditioning::Sinusoidal => (
                Some(
                    LinearConfig::new(width, dim_out)
                        .with_initializer(Initializer::Zeros)
                        .init(device),
                ),
                None,
            ),
            TimeConditioning::Readout => (
                None,
                Some(StepReadout {
                    weight: Param::from_tensor(Tensor::zeros([steps + 1, width * dim_out], device)),
                    bias: Param::from_tensor(Tensor::zeros([steps + 1, dim_out], device)),
                    dim_out,
                }),
            ),
        };
        // angular frequencies 2 pi f / T with f geometric from 1 to T/2
        let top = (steps as f64 / 2.0).max(1.0);
        let frequencies: Vec<f32> = (0..FREQUENCIES)
            .map(|k| {
                let f = top.powf(k as f64 / (FREQUENCIES - 1) as f64);
                (2.0 * std::f64::consts::PI * f / steps as f64) as f32
            })
            .collect();
        ReverseMlp {
            rbf,
            schedule: None,
            layers,
            time_embeddings,
            time_projections,
            frequencies,
            readout,
            step_readout,
            activation: self.activation,
        }
    }
}

/// A separate linear readout per step: `z = W[t] h + b[t]`.
#[derive(Module, Debug)]
pub struct StepReadout {
    /// `[T + 1, width * dim_out]`, row t holding step t's matrix.
    weight: Param<Tensor<2>>,
    /// `[T + 1, dim_out]`.
    bias: Param<Tensor<2>>,
    #[module(skip)]
    dim_out: usize,
}

impl StepReadout {
    fn forward(&self, h: Tensor<2>, steps: Steps) -> Tensor<2> {
        let [n, width] = h.dims();
        match steps {
            Steps::PerRow(t) => {
                let w: Tensor<3> =
                    self.weight
                        .val()
                        .select(0, t.clone())
                        .reshape([n, width, self.dim_out]);
                let z: Tensor<3> = h.unsqueeze_dim::<3>(1).matmul(w);
                z.reshape([n, self.dim_out]) + self.bias.val().select(0, t.clone())
            }
            // one matrix for every row
            Steps::All(t) => {
                let w = self
                    .weight
                    .val()
                    .narrow(0, t, 1)
                    .reshape([width, self.dim_out]);
                h.matmul(w) + self.bias.val().narrow(0, t, 1)
            }
        }
    }
}

/// The steps t of a batch of rows: one per row, or one for them all (sampling), which lets
/// the network use each step's parameters once, broadcast over the rows, instead of
/// gathering a copy per row.
#[derive(Debug, Clone, Copy)]
pub enum Steps<'a> {
    /// `[n]`, 1-based.
    PerRow(&'a Tensor<1, Int>),
    /// Every row at this step (1-based).
    All(usize),
}

/// A normalised radial-basis-function layer: `h = softmax_j(-|x - c_j|^2 / (2 s_j^2))`.
#[derive(Module, Debug)]
pub struct RbfLayer {
    /// The centres c_j, `[units, d]`.
    centers: Param<Tensor<2>>,
    /// ln s_j, `[units]`.
    log_width: Param<Tensor<1>>,
}

impl RbfLayer {
    /// `[n, d]` to `[n, units]`, each row summing to 1.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let c = self.centers.val();
        let [units, _] = c.dims();
        let inv_var = (self.log_width.val() * -2.0).exp().reshape([1, units]);
        let x2 = (x.clone() * x.clone()).sum_dim(1);
        let c2 = (c.clone() * c.clone()).sum_dim(1).reshape([1, units]);
        let squared = (x2 + c2 - x.matmul(c.transpose()) * 2.0).clamp_min(0.0);
        activation::softmax(squared * inv_var * -0.5, 1)
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

/// The reverse network: `h_l = act(W_l h_{l-1} + b_l [+ E_l[t]])` (or the RBF layer), then the
/// readout.
#[derive(Module, Debug)]
pub struct ReverseMlp {
    rbf: Option<RbfLayer>,
    schedule: Option<LearnedBetas>,
    layers: Vec<Linear>,
    time_embeddings: Vec<Embedding>,
    time_projections: Vec<Linear>,
    #[module(skip)]
    frequencies: Vec<f32>,
    readout: Option<Linear>,
    step_readout: Option<StepReadout>,
    #[module(skip)]
    activation: Activation,
}

impl ReverseMlp {
    /// Adds trainable betas starting from `betas` (the `learned` schedule).
    pub fn with_learned_schedule(mut self, betas: &[f64], device: &Device) -> Self {
        self.schedule = Some(LearnedBetas::new(betas, device));
        self
    }

    /// The learned betas, when the run learns its schedule.
    pub fn learned_schedule(&self) -> Option<&LearnedBetas> {
        self.schedule.as_ref()
    }

    /// `x_t` is `[n, d]`, `t` is `[n]` (1-based steps); returns `[n, dim_out]`.
    pub fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
        self.forward_steps(x_t, Steps::PerRow(&t))
    }

    /// [`forward`](Self::forward) with every row at step `t`: the same values, computed with
    /// each per-step parameter once instead of once per row.
    pub fn forward_at(&self, x_t: Tensor<2>, t: usize) -> Tensor<2> {
        self.forward_steps(x_t, Steps::All(t))
    }

    /// [`forward`](Self::forward) with the steps given either way.
    pub fn forward_steps(&self, x_t: Tensor<2>, steps: Steps) -> Tensor<2> {
        let device = x_t.device();
        // the steps as a column, `[n, 1]` or `[1, 1]`
        let column = || match steps {
            Steps::PerRow(t) => {
                let n = t.dims()[0];
                t.clone().reshape([n, 1])
            }
            Steps::All(t) => Tensor::<1, Int>::from_ints([t as i64], &device).reshape([1, 1]),
        };
        let features = (!self.time_projections.is_empty()).then(|| {
            let freqs = Tensor::<1>::from_floats(self.frequencies.as_slice(), &device)
                .reshape([1, self.frequencies.len()]);
            let angles = column().float() * freqs;
            Tensor::cat(vec![angles.clone().sin(), angles.cos()], 1)
        });
        let mut h = match &self.rbf {
            Some(rbf) => rbf.forward(x_t),
            None => x_t,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let mut pre = layer.forward(h);
            if let Some(embedding) = self.time_embeddings.get(i) {
                let e: Tensor<2> = match steps {
                    Steps::PerRow(_) => embedding.forward(column()).squeeze_dim(1),
                    Steps::All(t) => embedding.weight.val().narrow(0, t, 1),
                };
                pre = pre + e;
            }
            if let (Some(projection), Some(f)) = (self.time_projections.get(i), &features) {
                pre = pre + projection.forward(f.clone());
            }
            h = self.activation.apply(pre);
        }
        match (&self.readout, &self.step_readout) {
            (Some(readout), _) => readout.forward(h),
            (None, Some(step_readout)) => step_readout.forward(h, steps),
            (None, None) => unreachable!("a network has one readout"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::TensorData;

    /// Our softplus is Burn's to within f32 rounding, and its gradient is the sigmoid, from the
    /// far negative tail (where ln 1p matters) to the far positive one (where exp overflows).
    #[test]
    fn softplus_matches_the_definition_and_its_gradient_is_the_sigmoid() {
        let device = Device::flex().autodiff();
        let xs: Vec<f32> = vec![
            -100.0, -30.0, -17.0, -5.0, -1.0, -1e-3, 1e-3, 0.5, 3.0, 16.0, 40.0, 100.0,
        ];
        let n = xs.len();
        let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [1, n]), &device).require_grad();
        let y = softplus(x.clone());
        let grads = y.clone().sum().backward();
        let grad = x.grad(&grads).unwrap().into_data().convert::<f32>();
        let grad = grad.as_slice::<f32>().unwrap();
        let y = y.into_data().convert::<f32>();
        for ((&v, &got), &g) in xs.iter().zip(y.as_slice::<f32>().unwrap()).zip(grad) {
            let v64 = v as f64;
            let exact = v64.max(0.0) + (-v64.abs()).exp().ln_1p();
            assert!(
                (got as f64 - exact).abs() <= 1.2e-7 * exact.max(1.0),
                "softplus({v}) = {got}, not {exact}"
            );
            let sigmoid = 1.0 / (1.0 + (-v64).exp());
            assert!(
                (g as f64 - sigmoid).abs() < 1e-6,
                "softplus'({v}) = {g}, not {sigmoid}"
            );
        }
    }

    #[test]
    fn parameter_count_matches_the_built_network() {
        let device = Device::flex();
        for time in [
            TimeConditioning::Embedding,
            TimeConditioning::Readout,
            TimeConditioning::Sinusoidal,
        ] {
            let config = ModelConfig {
                hidden: vec![7, 5, 3],
                time,
                ..ModelConfig::default()
            };
            let model = config.init(2, 4, 13, &device);
            assert_eq!(
                config.parameter_count(2, 4, 13),
                model.num_params() as u128,
                "{time:?}"
            );
        }
        let rbf = ModelConfig {
            hidden: vec![16],
            time: TimeConditioning::Readout,
            kind: ModelKind::Rbf,
            ..ModelConfig::default()
        };
        // 16 centres of 2 coordinates, 16 widths, 41 readouts of 16 x 4 + 4
        assert_eq!(rbf.parameter_count(2, 4, 40), 32 + 16 + 41 * 68);
        assert_eq!(rbf.init(2, 4, 40, &device).num_params(), 32 + 16 + 41 * 68);
    }

    /// Every parameter replaced by N(0, 1) draws (the readouts start at zero, which would hide
    /// a wrong per-step readout).
    struct Randomize;

    impl burn::module::ModuleMapper for Randomize {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| Tensor::random(t.shape(), Distribution::Normal(0.0, 1.0), &t.device()))
        }
    }

    /// `forward_at(x, t)` (each step's parameters once, broadcast) is `forward(x, [t; n])` (a
    /// copy per row), for every way the network is told t.
    #[test]
    fn forward_at_one_step_equals_forward_with_that_step_per_row() {
        let device = Device::flex();
        let x = Tensor::<2>::random([9, 2], Distribution::Normal(0.0, 1.0), &device);
        let configs = [
            (TimeConditioning::Embedding, ModelKind::Mlp, vec![6, 5]),
            (TimeConditioning::Readout, ModelKind::Mlp, vec![6, 5]),
            (TimeConditioning::Sinusoidal, ModelKind::Mlp, vec![6, 5]),
            (TimeConditioning::Readout, ModelKind::Rbf, vec![7]),
        ];
        for (time, kind, hidden) in configs {
            let config = ModelConfig {
                hidden,
                time,
                kind,
                ..ModelConfig::default()
            };
            let model = config.init(2, 4, 10, &device).map(&mut Randomize);
            for t in [1, 7, 10] {
                let steps = Tensor::<1, Int>::from_ints([t as i64; 9], &device);
                let per_row = model.forward(x.clone(), steps).into_data().convert::<f32>();
                let once = model.forward_at(x.clone(), t).into_data().convert::<f32>();
                let (a, b) = (
                    per_row.as_slice::<f32>().unwrap(),
                    once.as_slice::<f32>().unwrap(),
                );
                assert_eq!(a.len(), 9 * 4);
                assert_eq!(b.len(), 9 * 4);
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(scale > 0.1, "{time:?} {kind:?} t = {t}: outputs near zero");
                for (p, q) in a.iter().zip(b) {
                    assert!(
                        (p - q).abs() <= 1e-5 * scale,
                        "{time:?} {kind:?} t = {t}: {p} vs {q}"
                    );
                }
            }
        }
    }

    /// The RBF layer is the normalised Gaussian bumps of its definition, computed here in f64.
    #[test]
    fn rbf_layer_is_the_normalised_gaussian_bumps() {
        let device = Device::flex();
        let centers = [[0.0f32, 0.0], [1.0, -1.0], [-2.0, 0.5]];
        let widths = [0.5f32, 1.5, 0.8];
        let layer = RbfLayer {
            centers: Param::from_tensor(Tensor::from_data(
                TensorData::new(centers.concat(), [3, 2]),
                &device,
            )),
            log_width: Param::from_tensor(Tensor::from_data(
                TensorData::new(widths.iter().map(|w| w.ln()).collect::<Vec<_>>(), [3]),
                &device,
            )),
        };
        let xs = [[0.1f32, 0.2], [3.0, -2.0], [-1.0, 1.0], [-9.0, 9.0]];
        let h = layer
            .forward(Tensor::from_data(
                TensorData::new(xs.concat(), [4, 2]),
                &device,
            ))
            .into_data()
            .convert::<f32>();
        let h = h.as_slice::<f32>().unwrap();
        for (i, x) in xs.iter().enumerate() {
            let bumps: Vec<f64> = centers
                .iter()
                .zip(widths)
                .map(|(c, w)| {
                    let d2 = (x[0] - c[0]).powi(2) as f64 + (x[1] - c[1]).powi(2) as f64;
                    -d2 / (2.0 * (w as f64).powi(2))
                })
                .collect();
            let top = bumps.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = bumps.iter().map(|b| (b - top).exp()).sum();
            for (j, b) in bumps.iter().enumerate() {
                let want = (b - top).exp() / total;
                let got = h[3 * i + j] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "x {i}, unit {j}: {got} vs {want}"
                );
            }
        }
    }
}
