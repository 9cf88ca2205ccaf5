//! The reverse-process network: an MLP on `x_t`, told the step t in one of two ways (SPEC
//! section 4):
//!
//! - `embedding`: a learned per-step vector added to every hidden layer, one shared readout (the
//!   presentation's Swiss-roll model with `hidden = [128, 128]`, softplus; the "tweaked" heartbeat
//!   model);
//! - `readout`: hidden layers shared across time and a separate readout per step (the paper's
//!   models: the heartbeat MLP 20 -> 50 -> 50 -> 50 with sigmoid units).
//!
//! The output is `[z_mu, z_sigma]` (2d values) for Gaussian diffusion and one logit per bit (d
//! values) for binomial diffusion.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation;
use burn::tensor::{Device, Int, Tensor};
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

/// softplus(x) = ln(1 + e^x), computed as max(x, 0) + ln(1 + e^-|x|): no overflow and no
/// masks, and `ln` of a value in (1, 2] is as accurate (absolute error below 1e-7) as `ln_1p`
/// there, but several times cheaper per element on the CPU than the `log1p` that Burn's
/// `softplus` uses (measured: `log1pf` was a quarter of a training step's time).
pub fn softplus(x: Tensor<2>) -> Tensor<2> {
    x.clone().clamp_min(0.0) + (x.abs().neg().exp() + 1.0).log()
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
        }
    }
}

impl ModelConfig {
    /// The number of parameters of [`init`](Self::init)'s network, computed without building it.
    pub fn parameter_count(&self, dim_in: usize, dim_out: usize, steps: usize) -> u128 {
        let (steps, dim_out) = (steps as u128 + 1, dim_out as u128);
        let mut width = dim_in as u128;
        let mut count = 0u128;
        for &h in &self.hidden {
            let h = h as u128;
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
        for &h in &self.hidden {
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
    fn forward(&self, h: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
        let [n, width] = h.dims();
        let w: Tensor<3> = self
            .weight
            .val()
            .select(0, t.clone())
            .reshape([n, width, self.dim_out]);
        let z: Tensor<3> = h.unsqueeze_dim::<3>(1).matmul(w);
        z.reshape([n, self.dim_out]) + self.bias.val().select(0, t)
    }
}

/// The reverse network: `h_l = act(W_l h_{l-1} + b_l [+ E_l[t]])`, then the readout.
#[derive(Module, Debug)]
pub struct ReverseMlp {
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
    /// `x_t` is `[n, d]`, `t` is `[n]` (1-based steps); returns `[n, dim_out]`.
    pub fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
        let [n, _] = x_t.dims();
        let t2 = t.clone().reshape([n, 1]);
        let features = (!self.time_projections.is_empty()).then(|| {
            let device = x_t.device();
            let freqs = Tensor::<1>::from_floats(self.frequencies.as_slice(), &device)
                .reshape([1, self.frequencies.len()]);
            let angles = t2.clone().float() * freqs;
            Tensor::cat(vec![angles.clone().sin(), angles.cos()], 1)
        });
        let mut h = x_t;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut pre = layer.forward(h);
            if let Some(embedding) = self.time_embeddings.get(i) {
                let e: Tensor<2> = embedding.forward(t2.clone()).squeeze_dim(1);
                pre = pre + e;
            }
            if let (Some(projection), Some(f)) = (self.time_projections.get(i), &features) {
                pre = pre + projection.forward(f.clone());
            }
            h = self.activation.apply(pre);
        }
        match (&self.readout, &self.step_readout) {
            (Some(readout), _) => readout.forward(h),
            (None, Some(step_readout)) => step_readout.forward(h, t),
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
    }
}
