//! The reverse-process network: an MLP on `x_t` with a learned per-step embedding added to every
//! hidden layer, reading out `[z_mu, z_sigma]` (SPEC section 4, the presentation's model when
//! `hidden = [128, 128]` with softplus).

use burn::module::Module;
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

impl Activation {
    fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Softplus => activation::softplus(x, 1.0),
            Self::Relu => activation::relu(x),
            Self::Tanh => activation::tanh(x),
            Self::Sigmoid => activation::sigmoid(x),
            Self::Silu => activation::silu(x),
        }
    }
}

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
}

fn default_hidden() -> Vec<usize> {
    vec![128, 128]
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            hidden: default_hidden(),
            activation: Activation::default(),
        }
    }
}

impl ModelConfig {
    /// A network for `dim`-dimensional data and steps `t = 1..=steps`. The readout starts at
    /// zero, so with the `paper` parametrization the untrained model is the forward kernel.
    pub fn init(&self, dim: usize, steps: usize, device: &Device) -> ReverseMlp {
        let mut layers = Vec::with_capacity(self.hidden.len());
        let mut time_embeddings = Vec::with_capacity(self.hidden.len());
        let mut width = dim;
        for &h in &self.hidden {
            layers.push(LinearConfig::new(width, h).init(device));
            time_embeddings.push(
                EmbeddingConfig::new(steps + 1, h)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: 0.1,
                    })
                    .init(device),
            );
            width = h;
        }
        let readout = LinearConfig::new(width, 2 * dim)
            .with_initializer(Initializer::Zeros)
            .init(device);
        ReverseMlp {
            layers,
            time_embeddings,
            readout,
            activation: self.activation,
        }
    }
}

/// The reverse network: `z = readout(h_L)`, `h_l = act(W_l h_{l-1} + b_l + E_l[t])`.
#[derive(Module, Debug)]
pub struct ReverseMlp {
    layers: Vec<Linear>,
    time_embeddings: Vec<Embedding>,
    readout: Linear,
    #[module(skip)]
    activation: Activation,
}

impl ReverseMlp {
    /// `x_t` is `[n, d]`, `t` is `[n]` (1-based steps); returns `[n, 2d]` = `[z_mu, z_sigma]`.
    pub fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
        let [n, _] = x_t.dims();
        let t = t.reshape([n, 1]);
        let mut h = x_t;
        for (layer, embedding) in self.layers.iter().zip(&self.time_embeddings) {
            let e: Tensor<2> = embedding.forward(t.clone()).squeeze_dim(1);
            h = self.activation.apply(layer.forward(h) + e);
        }
        self.readout.forward(h)
    }
}
