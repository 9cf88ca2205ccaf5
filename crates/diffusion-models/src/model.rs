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
//! Each is its own [`ReverseNetwork`] type ([`Mlp`], [`ReadoutMlp`], [`RbfNet`]);
//! [`ModelConfig::init`] builds the one a config describes as a [`Network`].

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation;
use burn::tensor::{Device, Distribution, Int, Tensor};
use serde::{Deserialize, Serialize};

use diffusion_kernels::Shift;

use crate::image::{ImageConfigError, PaperConvConfig, PaperConvNet, Unet, UnetConfig};
use crate::network::ReverseNetwork;
use diffusion_data::ImageShape;

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
/// backend op forward and one backward, with no overflow for any x.
pub fn softplus(x: Tensor<2>) -> Tensor<2> {
    diffusion_kernels::Activation::Softplus.apply(x)
}

impl Activation {
    /// The fused layer's kernel for this activation, where it has one.
    fn fused(&self) -> Option<diffusion_kernels::Activation> {
        use diffusion_kernels::Activation as Fused;
        match self {
            Self::Softplus => Some(Fused::Softplus),
            Self::Relu => Some(Fused::Relu),
            Self::Tanh => Some(Fused::Tanh),
            Self::Sigmoid => Some(Fused::Sigmoid),
            // its derivative is not a function of its output
            Self::Silu => None,
        }
    }

    fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        match self.fused() {
            Some(fused) => fused.apply(x),
            None => activation::silu(x),
        }
    }

    /// `act(layer(x) + shift)`, as one fused layer where the activation has a kernel
    /// ([`diffusion_kernels::linear_activation`]: fused on flex, Burn's operations elsewhere).
    /// The layer's weights are used before `shift` is computed (Burn initialises a parameter
    /// when it is first used, so this order is what a seed fixes).
    fn layer(&self, layer: &Linear, x: Tensor<2>, shift: impl FnOnce() -> Shift) -> Tensor<2> {
        match self.fused() {
            Some(fused) => fused_layer(layer, x, shift, fused),
            None => {
                let pre = layer.forward(x);
                self.apply(shift().add_to(pre))
            }
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
    /// Image data: the U-Net of improved diffusion ([`crate::image::Unet`]), shaped by the
    /// `[model.unet]` table.
    Unet,
    /// Image data: the paper's multi-scale convolutional network
    /// ([`crate::image::PaperConvNet`]), shaped by the `[model.conv]` table.
    PaperConv,
}

impl ModelKind {
    /// Whether the network is one over images (it needs the data's image shape).
    pub fn is_image(&self) -> bool {
        matches!(self, Self::Unet | Self::PaperConv)
    }
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
    /// Affine-and-activation layers, the paper's radial-basis-function layer, or an image
    /// network.
    #[serde(default)]
    pub kind: ModelKind,
    /// `kind = "unet"`: its shape (the defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet: Option<UnetConfig>,
    /// `kind = "paper-conv"`: its shape (the reference code's MNIST defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<PaperConvConfig>,
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
            unet: None,
            conv: None,
        }
    }
}

/// The initial width s_j of every radial basis function (data have unit variance per coordinate).
const RBF_INITIAL_WIDTH: f64 = 0.5;

impl ModelConfig {
    /// Checks an image network's table against the data's image shape (and that the other
    /// kinds have no image table).
    pub fn check_image(&self, image: Option<ImageShape>) -> Result<(), ImageConfigError> {
        self.check_tables()?;
        if !self.kind.is_image() {
            return Ok(());
        }
        let Some(shape) = image else {
            return Err(ImageConfigError(
                "an image network needs image data: an IDX file, a 3-D or 4-D .npy, or a folder \
                 of PNG files"
                    .into(),
            ));
        };
        match self.kind {
            ModelKind::Unet => self.unet.clone().unwrap_or_default().check(shape),
            _ => self.conv.clone().unwrap_or_default().check(shape),
        }
    }

    /// Checks that an image network's table goes with its kind (what can be checked before the
    /// data's shape is known).
    pub fn check_tables(&self) -> Result<(), ImageConfigError> {
        let fail = |m: &str| Err(ImageConfigError(m.into()));
        if self.unet.is_some() && self.kind != ModelKind::Unet {
            return fail("model.unet is for kind = \"unet\"");
        }
        if self.conv.is_some() && self.kind != ModelKind::PaperConv {
            return fail("model.conv is for kind = \"paper-conv\"");
        }
        Ok(())
    }

    /// [`parameter_count`](Self::parameter_count) for any kind: the image networks' from the
    /// image shape.
    pub fn parameter_count_for(
        &self,
        image: Option<ImageShape>,
        dim_in: usize,
        dim_out: usize,
        steps: usize,
    ) -> u128 {
        match (self.kind, image) {
            (ModelKind::Unet, Some(shape)) => self
                .unet
                .clone()
                .unwrap_or_default()
                .parameter_count(shape, dim_out),
            (ModelKind::PaperConv, Some(shape)) => self
                .conv
                .clone()
                .unwrap_or_default()
                .parameter_count(shape, dim_out),
            _ => self.parameter_count(dim_in, dim_out, steps),
        }
    }

    /// [`init`](Self::init) for any kind: the image networks for rows of `image`'s shape
    /// (`gaussian` tells the paper's network that its second half of outputs is `z_sigma`).
    /// Check the shape first ([`check_image`](Self::check_image)).
    pub fn init_for(
        &self,
        image: Option<ImageShape>,
        dim_in: usize,
        dim_out: usize,
        steps: usize,
        gaussian: bool,
        device: &Device,
    ) -> Network {
        match (self.kind, image) {
            (ModelKind::Unet, Some(shape)) => Network::Unet(
                self.unet
                    .clone()
                    .unwrap_or_default()
                    .init(shape, dim_out, device),
            ),
            (ModelKind::PaperConv, Some(shape)) => Network::PaperConv(
                self.conv
                    .clone()
                    .unwrap_or_default()
                    .init(shape, dim_out, steps, gaussian, device),
            ),
            _ => self.init(dim_in, dim_out, steps, device),
        }
    }

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
    pub fn init(&self, dim_in: usize, dim_out: usize, steps: usize, device: &Device) -> Network {
        if self.kind == ModelKind::Rbf {
            let units = self.hidden.first().copied().unwrap_or(16);
            return Network::Rbf(RbfNet {
                rbf: RbfLayer::new(units, dim_in, device),
                readout: StepReadout::zeros(steps, units, dim_out, device),
            });
        }
        let mut layers = Vec::with_capacity(self.hidden.len());
        let mut embeddings = Vec::new();
        let mut projections = Vec::new();
        let mut width = dim_in;
        // each layer's time input is drawn right after its weights (the seed fixes both)
        for &h in &self.hidden {
            layers.push(LinearConfig::new(width, h).init(device));
            match self.time {
                TimeConditioning::Embedding => embeddings.push(
                    EmbeddingConfig::new(steps + 1, h)
                        .with_initializer(Initializer::Normal {
                            mean: 0.0,
                            std: 0.1,
                        })
                        .init(device),
                ),
                TimeConditioning::Sinusoidal => {
                    projections.push(LinearConfig::new(2 * FREQUENCIES, h).init(device))
                }
                TimeConditioning::Readout => {}
            }
            width = h;
        }
        let activation = self.activation;
        let time = match self.time {
            TimeConditioning::Readout => {
                return Network::Readout(ReadoutMlp {
                    layers,
                    readout: StepReadout::zeros(steps, width, dim_out, device),
                    activation,
                });
            }
            TimeConditioning::Embedding => TimeInput::Embedding(embeddings),
            TimeConditioning::Sinusoidal => TimeInput::Sinusoidal(SinusoidalTime {
                projections,
                frequencies: sinusoidal_frequencies(steps),
            }),
        };
        Network::Mlp(Mlp {
            layers,
            time,
            readout: LinearConfig::new(width, dim_out)
                .with_initializer(Initializer::Zeros)
                .init(device),
            activation,
        })
    }
}

/// Angular frequencies 2 pi f / T with f geometric from 1 to T/2.
fn sinusoidal_frequencies(steps: usize) -> Vec<f32> {
    let top = (steps as f64 / 2.0).max(1.0);
    (0..FREQUENCIES)
        .map(|k| {
            let f = top.powf(k as f64 / (FREQUENCIES - 1) as f64);
            (2.0 * std::f64::consts::PI * f / steps as f64) as f32
        })
        .collect()
}

/// The steps t of a batch of rows: one per row, or one for them all (sampling), which lets
/// the network use each step's parameters once, broadcast over the rows, instead of
/// gathering a copy per row.
#[derive(Debug, Clone, Copy)]
enum Steps<'a> {
    /// `[n]`, 1-based.
    PerRow(&'a Tensor<1, Int>),
    /// Every row at this step (1-based).
    All(usize),
}

impl Steps<'_> {
    /// The steps as a column, `[n, 1]` or `[1, 1]`.
    fn column(&self, device: &Device) -> Tensor<2, Int> {
        match *self {
            Steps::PerRow(t) => {
                let n = t.dims()[0];
                t.clone().reshape([n, 1])
            }
            Steps::All(t) => Tensor::<1, Int>::from_ints([t as i64], device).reshape([1, 1]),
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
    /// Readouts for steps 0..=steps, all zero.
    pub fn zeros(steps: usize, width: usize, dim_out: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::zeros([steps + 1, width * dim_out], device)),
            bias: Param::from_tensor(Tensor::zeros([steps + 1, dim_out], device)),
            dim_out,
        }
    }

    fn forward(&self, h: Tensor<2>, steps: Steps) -> Tensor<2> {
        let width = h.dims()[1];
        match steps {
            // each row's own matrix, read in place on flex
            Steps::PerRow(t) => {
                diffusion_kernels::readout_rows(h, self.weight.val(), self.bias.val(), t.clone())
            }
            // one matrix for every row
            Steps::All(t) => {
                let w = self
                    .weight
                    .val()
                    .narrow(0, t, 1)
                    .reshape([width, self.dim_out]);
                let bias = self.bias.val().narrow(0, t, 1).reshape([self.dim_out]);
                diffusion_kernels::linear_activation(
                    h,
                    w,
                    Some(bias),
                    diffusion_kernels::Shift::None,
                    diffusion_kernels::Activation::Identity,
                )
            }
        }
    }
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
    /// `units` bumps on `d` coordinates: centres drawn from N(0, I), widths 0.5.
    pub fn new(units: usize, d: usize, device: &Device) -> Self {
        Self {
            centers: Param::from_tensor(Tensor::random(
                [units, d],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            log_width: Param::from_tensor(Tensor::full([units], RBF_INITIAL_WIDTH.ln(), device)),
        }
    }

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

/// Fixed sinusoidal features of t, mapped by a learned linear layer into each hidden layer.
#[derive(Module, Debug)]
pub struct SinusoidalTime {
    /// One projection of the `2 * FREQUENCIES` features per hidden layer.
    projections: Vec<Linear>,
    #[module(skip)]
    frequencies: Vec<f32>,
}

impl SinusoidalTime {
    /// `[sin(w t), cos(w t)]`, `[n, 2 * FREQUENCIES]` (or `[1, ..]` for one step).
    fn features(&self, steps: Steps, device: &Device) -> Tensor<2> {
        let freqs = Tensor::<1>::from_floats(self.frequencies.as_slice(), device)
            .reshape([1, self.frequencies.len()]);
        let angles = steps.column(device).float() * freqs;
        Tensor::cat(vec![angles.clone().sin(), angles.cos()], 1)
    }
}

/// How [`Mlp`] adds the step t to each hidden layer's pre-activation.
#[derive(Module, Debug)]
pub enum TimeInput {
    /// A learned vector per step and layer.
    Embedding(Vec<Embedding>),
    /// Sinusoidal features through a learned projection per layer.
    Sinusoidal(SinusoidalTime),
}

/// Step t's learned vector of one layer: the table's row t for each row (read in place by the
/// fused layer), or the one row `[1, h]` when every row is at one step.
fn embedding_term(embedding: &Embedding, steps: Steps) -> Shift {
    match steps {
        Steps::PerRow(t) => Shift::Rows {
            table: embedding.weight.val(),
            index: t.clone(),
        },
        Steps::All(t) => Shift::Dense(embedding.weight.val().narrow(0, t, 1)),
    }
}

/// The presentation's network: `h_l = act(W_l h_{l-1} + b_l + time_l(t))`, one shared readout.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    time: TimeInput,
    readout: Linear,
    #[module(skip)]
    activation: Activation,
}

impl Mlp {
    fn forward_steps(&self, x_t: Tensor<2>, steps: Steps) -> Tensor<2> {
        match &self.time {
            TimeInput::Embedding(embeddings) => {
                self.layers_then_readout(x_t, |i| embedding_term(&embeddings[i], steps))
            }
            TimeInput::Sinusoidal(s) => {
                let features = s.features(steps, &x_t.device());
                self.layers_then_readout(x_t, |i| {
                    Shift::Dense(s.projections[i].forward(features.clone()))
                })
            }
        }
    }

    /// The hidden layers, layer i's pre-activation plus `time(i)`, then the readout. Each
    /// layer's weights are used before its time input: Burn initialises a parameter when it is
    /// first used, so this order is what a seed fixes.
    fn layers_then_readout(&self, x_t: Tensor<2>, time: impl Fn(usize) -> Shift) -> Tensor<2> {
        let mut h = x_t;
        for (i, layer) in self.layers.iter().enumerate() {
            h = self.activation.layer(layer, h, || time(i));
        }
        affine(&self.readout, h)
    }
}

/// `act(layer(x) + shift())` through [`diffusion_kernels::linear_activation`], the layer's
/// parameters read before `shift` is computed.
fn fused_layer(
    layer: &Linear,
    x: Tensor<2>,
    shift: impl FnOnce() -> Shift,
    act: diffusion_kernels::Activation,
) -> Tensor<2> {
    let w = layer.weight.val();
    let b = layer.bias.as_ref().map(|b| b.val());
    diffusion_kernels::linear_activation(x, w, b, shift(), act)
}

/// `layer(x)` through the fused layer's products (no element-wise step backward).
fn affine(layer: &Linear, x: Tensor<2>) -> Tensor<2> {
    fused_layer(
        layer,
        x,
        || Shift::None,
        diffusion_kernels::Activation::Identity,
    )
}

/// The paper's heartbeat network: hidden layers shared across time, a readout per step.
#[derive(Module, Debug)]
pub struct ReadoutMlp {
    layers: Vec<Linear>,
    readout: StepReadout,
    #[module(skip)]
    activation: Activation,
}

impl ReadoutMlp {
    fn forward_steps(&self, x_t: Tensor<2>, steps: Steps) -> Tensor<2> {
        let mut h = x_t;
        for layer in &self.layers {
            h = self.activation.layer(layer, h, || Shift::None);
        }
        self.readout.forward(h, steps)
    }
}

/// The paper's Swiss-roll network: a normalised RBF layer shared across time, a readout per step.
#[derive(Module, Debug)]
pub struct RbfNet {
    rbf: RbfLayer,
    readout: StepReadout,
}

/// The network a [`ModelConfig`] describes.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Network {
    /// Time embeddings or sinusoidal features, one readout.
    Mlp(Mlp),
    /// A readout per step.
    Readout(ReadoutMlp),
    /// The paper's RBF network.
    Rbf(RbfNet),
    /// The U-Net over images.
    Unet(Unet),
    /// The paper's convolutional network over images.
    PaperConv(PaperConvNet),
}

impl Network {
    fn forward_steps(&self, x_t: Tensor<2>, steps: Steps) -> Tensor<2> {
        match self {
            Self::Mlp(m) => m.forward_steps(x_t, steps),
            Self::Readout(m) => m.forward_steps(x_t, steps),
            Self::Rbf(m) => m.forward_steps(x_t, steps),
            Self::Unet(m) => image_forward(m, x_t, steps),
            Self::PaperConv(m) => image_forward(m, x_t, steps),
        }
    }
}

/// An image network's forward pass for a batch's steps.
fn image_forward<N: ReverseNetwork>(network: &N, x_t: Tensor<2>, steps: Steps) -> Tensor<2> {
    match steps {
        Steps::PerRow(t) => network.forward(x_t, t.clone()),
        Steps::All(t) => network.forward_at(x_t, t),
    }
}

/// Implements [`ReverseNetwork`] through `forward_steps`, using each step's parameters once when
/// every row is at the same step.
macro_rules! reverse_network {
    ($($ty:ty),*) => {$(
        impl ReverseNetwork for $ty {
            fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
                self.forward_steps(x_t, Steps::PerRow(&t))
            }

            fn forward_at(&self, x_t: Tensor<2>, t: usize) -> Tensor<2> {
                self.forward_steps(x_t, Steps::All(t))
            }
        }
    )*};
}

reverse_network!(Mlp, ReadoutMlp);

impl ReverseNetwork for Network {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
        self.forward_steps(x_t, Steps::PerRow(&t))
    }

    fn forward_at(&self, x_t: Tensor<2>, t: usize) -> Tensor<2> {
        self.forward_steps(x_t, Steps::All(t))
    }

    fn splits_batches(&self) -> bool {
        match self {
            Self::Unet(m) => m.splits_batches(),
            Self::PaperConv(m) => m.splits_batches(),
            Self::Mlp(_) | Self::Readout(_) | Self::Rbf(_) => false,
        }
    }
}

impl RbfNet {
    fn forward_steps(&self, x_t: Tensor<2>, steps: Steps) -> Tensor<2> {
        self.readout.forward(self.rbf.forward(x_t), steps)
    }
}

reverse_network!(RbfNet);

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

    /// Every parameter tracked for gradients (autodiff devices).
    struct Track;

    impl burn::module::ModuleMapper for Track {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.require_grad())
        }
    }

    /// The largest difference between two tensors' values, and the larger's scale.
    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> (f32, f32) {
        let a = a
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        let b = b
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        (
            a.iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs())),
            scale,
        )
    }

    /// The fused hidden layers (on flex) are Burn's composition of the same parameters, in value
    /// and in the gradients of the first layer's weights and the per-step terms, for every
    /// activation and time input, steps differing per row.
    #[test]
    fn fused_layers_equal_burns_composition_of_the_same_parameters() {
        let device = Device::flex().autodiff();
        let n = 300;
        let x = Tensor::<2>::random([n, 2], Distribution::Normal(0.0, 1.0), &device);
        let t: Vec<i64> = (0..n as i64).map(|r| 1 + (r * 7) % 10).collect();
        let t = Tensor::<1, Int>::from_ints(t.as_slice(), &device);
        let weights = Tensor::<2>::random([n, 4], Distribution::Normal(0.0, 1.0), &device);
        let activations = [
            Activation::Softplus,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Relu,
            Activation::Silu,
        ];
        for activation in activations {
            for time in [TimeConditioning::Embedding, TimeConditioning::Sinusoidal] {
                let config = ModelConfig {
                    hidden: vec![33, 17],
                    activation,
                    time,
                    ..ModelConfig::default()
                };
                let model = config
                    .init(2, 4, 10, &device)
                    .map(&mut Randomize)
                    .map(&mut Track);
                let Network::Mlp(m) = model else {
                    unreachable!("an MLP config")
                };
                let fused = m.forward(x.clone(), t.clone());
                let mut h = x.clone();
                for (i, layer) in m.layers.iter().enumerate() {
                    let term = match &m.time {
                        TimeInput::Embedding(e) => {
                            e[i].forward(t.clone().reshape([n, 1])).squeeze_dim(1)
                        }
                        TimeInput::Sinusoidal(s) => {
                            s.projections[i].forward(s.features(Steps::PerRow(&t), &device))
                        }
                    };
                    h = activation.apply(layer.forward(h) + term);
                }
                let composed = m.readout.forward(h);
                let (diff, scale) = max_diff(fused.clone(), composed.clone());
                assert!(
                    diff <= 2e-5 * scale.max(1.0),
                    "{activation:?} {time:?}: {diff}"
                );
                let gf = (fused * weights.clone()).sum().backward();
                let gc = (composed * weights.clone()).sum().backward();
                let w0 = m.layers[0].weight.val();
                let (diff, scale) = max_diff(w0.grad(&gf).unwrap(), w0.grad(&gc).unwrap());
                assert!(
                    diff <= 2e-5 * scale.max(1.0),
                    "{activation:?} {time:?} dW: {diff}"
                );
                if let TimeInput::Embedding(e) = &m.time {
                    let table = e[0].weight.val();
                    let (diff, scale) =
                        max_diff(table.grad(&gf).unwrap(), table.grad(&gc).unwrap());
                    assert!(scale > 0.0, "{activation:?}: no gradient reached the table");
                    assert!(
                        diff <= 2e-5 * scale.max(1.0),
                        "{activation:?} table: {diff}"
                    );
                }
            }
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
