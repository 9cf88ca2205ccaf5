//! The paper's image network (appendix D.2.1; the reference code's `regression.py` and
//! `model.py`; SPEC section 7).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Int, Tensor, TensorData};
use diffusion_data::ImageShape;
use diffusion_kernels::{Activation, Shift};
use serde::{Deserialize, Serialize};

use super::{ImageConfigError, conv, mean_pool2, repeat2, to_images, to_rows};
use crate::network::ReverseNetwork;

/// The largest value of any of the config's sizes.
const MAX_SIZE: usize = 1 << 14;

/// The reference code's nonlinearity, the leaky ReLU of slope 0.05
/// ([`diffusion_kernels::LEAKY_RELU_SLOPE`]), in one vectorised pass each way on flex.
fn leaky_relu(x: Tensor<4>) -> Tensor<4> {
    let dims = x.dims();
    let rows = x.reshape([dims[0], dims[1] * dims[2] * dims[3]]);
    diffusion_kernels::activate(rows, Activation::LeakyRelu).reshape(dims)
}

/// The shape of a [`PaperConvNet`] (the `[model.conv]` table of a config), with the reference
/// code's names and MNIST defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperConvConfig {
    /// Multi-scale convolutional layers.
    #[serde(default = "default_layers_conv")]
    pub n_layers_conv: usize,
    /// Channels of each.
    #[serde(default = "default_hidden_conv")]
    pub n_hidden_conv: usize,
    /// Scales per layer: scale s mean-pools the input by 2^s, convolves 3x3 and repeats each
    /// pixel back up (the image's sides must divide by 2^(n_scales - 1)).
    #[serde(default = "default_scales")]
    pub n_scales: usize,
    /// Layers of the dense branch over the whole image (0: no dense branch).
    #[serde(default = "default_layers_dense_lower")]
    pub n_layers_dense_lower: usize,
    /// Units of its hidden layers.
    #[serde(default = "default_hidden_dense_lower")]
    pub n_hidden_dense_lower: usize,
    /// Values per pixel it outputs.
    #[serde(default = "default_hidden_dense_lower_output")]
    pub n_hidden_dense_lower_output: usize,
    /// Per-pixel dense layers on top (the last one linear, to the readout's coefficients).
    #[serde(default = "default_layers_dense_upper")]
    pub n_layers_dense_upper: usize,
    /// Units of their hidden layers.
    #[serde(default = "default_hidden_dense_upper")]
    pub n_hidden_dense_upper: usize,
    /// Gaussian bumps J of the temporal readout.
    #[serde(default = "default_temporal_basis")]
    pub n_temporal_basis: usize,
}

fn default_layers_conv() -> usize {
    4
}
fn default_hidden_conv() -> usize {
    20
}
fn default_scales() -> usize {
    1
}
fn default_layers_dense_lower() -> usize {
    4
}
fn default_hidden_dense_lower() -> usize {
    500
}
fn default_hidden_dense_lower_output() -> usize {
    2
}
fn default_layers_dense_upper() -> usize {
    2
}
fn default_hidden_dense_upper() -> usize {
    20
}
fn default_temporal_basis() -> usize {
    10
}

impl Default for PaperConvConfig {
    fn default() -> Self {
        Self {
            n_layers_conv: default_layers_conv(),
            n_hidden_conv: default_hidden_conv(),
            n_scales: default_scales(),
            n_layers_dense_lower: default_layers_dense_lower(),
            n_hidden_dense_lower: default_hidden_dense_lower(),
            n_hidden_dense_lower_output: default_hidden_dense_lower_output(),
            n_layers_dense_upper: default_layers_dense_upper(),
            n_hidden_dense_upper: default_hidden_dense_upper(),
            n_temporal_basis: default_temporal_basis(),
        }
    }
}

impl PaperConvConfig {
    /// Checks the config against an image shape.
    pub fn check(&self, shape: ImageShape) -> Result<(), ImageConfigError> {
        let fail = |m: String| Err(ImageConfigError(format!("model.conv: {m}")));
        if self.n_layers_conv == 0 || self.n_hidden_conv == 0 {
            return fail("n_layers_conv and n_hidden_conv must be at least 1".into());
        }
        let sizes = [
            self.n_layers_conv,
            self.n_hidden_conv,
            self.n_layers_dense_lower,
            self.n_hidden_dense_lower,
            self.n_hidden_dense_lower_output,
            self.n_layers_dense_upper,
            self.n_hidden_dense_upper,
            self.n_temporal_basis,
        ];
        if sizes.iter().any(|&v| v > MAX_SIZE) {
            return fail(format!("every size must be at most {MAX_SIZE}"));
        }
        if self.n_scales == 0 || self.n_scales > 16 {
            return fail(format!("n_scales = {} must lie in 1..=16", self.n_scales));
        }
        let side = 1usize << (self.n_scales - 1);
        if !shape.height.is_multiple_of(side) || !shape.width.is_multiple_of(side) {
            return fail(format!(
                "{} scales pool by up to {side}, but {}x{} pixels do not divide by it",
                self.n_scales, shape.height, shape.width
            ));
        }
        if self.n_layers_dense_lower > 0
            && (self.n_hidden_dense_lower == 0 || self.n_hidden_dense_lower_output == 0)
        {
            return fail(
                "a dense branch needs n_hidden_dense_lower and n_hidden_dense_lower_output of at \
                 least 1 (or n_layers_dense_lower = 0 for none)"
                    .into(),
            );
        }
        if self.n_layers_dense_upper == 0 || self.n_hidden_dense_upper == 0 {
            return fail("n_layers_dense_upper and n_hidden_dense_upper must be at least 1".into());
        }
        if self.n_temporal_basis == 0 {
            return fail("n_temporal_basis must be at least 1".into());
        }
        Ok(())
    }

    /// The widths of the dense branch, input first (empty when there is none).
    fn dense_widths(&self, shape: ImageShape) -> Vec<usize> {
        if self.n_layers_dense_lower == 0 {
            return Vec::new();
        }
        let pixels = shape.height * shape.width;
        let mut widths = vec![shape.len()];
        widths.extend(std::iter::repeat_n(
            self.n_hidden_dense_lower,
            self.n_layers_dense_lower - 1,
        ));
        widths.push(self.n_hidden_dense_lower_output * pixels);
        widths
    }

    /// The widths of the per-pixel layers, input first.
    fn upper_widths(&self, outputs_per_pixel: usize) -> Vec<usize> {
        let dense = if self.n_layers_dense_lower > 0 {
            self.n_hidden_dense_lower_output
        } else {
            0
        };
        let mut widths = vec![self.n_hidden_conv + dense];
        widths.extend(std::iter::repeat_n(
            self.n_hidden_dense_upper,
            self.n_layers_dense_upper - 1,
        ));
        widths.push(outputs_per_pixel * self.n_temporal_basis);
        widths
    }

    /// The number of parameters of [`init`](Self::init)'s network, without building it.
    pub fn parameter_count(&self, shape: ImageShape, dim_out: usize) -> u128 {
        let pairs = |w: &[usize]| {
            w.windows(2)
                .map(|p| p[0] as u128 * p[1] as u128 + p[1] as u128)
                .sum::<u128>()
        };
        let mut count = 0u128;
        let mut channels = shape.channels as u128;
        let hidden = self.n_hidden_conv as u128;
        for _ in 0..self.n_layers_conv {
            count += self.n_scales as u128 * (channels * hidden * 9 + hidden);
            channels = hidden;
        }
        let per_pixel = dim_out / (shape.height * shape.width);
        count + pairs(&self.dense_widths(shape)) + pairs(&self.upper_widths(per_pixel))
    }

    /// The network from images of `shape` to `dim_out` values per row (`2c` per pixel for
    /// Gaussian diffusion: `z_mu` and `z_sigma`; `c` for binomial) for steps `1..=steps`. The
    /// last per-pixel layer starts at zero, so with the paper's parametrization the untrained
    /// model is the forward kernel. `z_sigma` is divided by sqrt(T), as in the reference code.
    pub fn init(
        &self,
        shape: ImageShape,
        dim_out: usize,
        steps: usize,
        gaussian: bool,
        device: &Device,
    ) -> PaperConvNet {
        let mut conv = Vec::new();
        let mut channels = shape.channels;
        for _ in 0..self.n_layers_conv {
            conv.push(MultiScaleConv {
                scales: (0..self.n_scales)
                    .map(|_| {
                        Conv2dConfig::new([channels, self.n_hidden_conv], [3, 3])
                            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                            .init(device)
                    })
                    .collect(),
            });
            channels = self.n_hidden_conv;
        }
        let dense = self
            .dense_widths(shape)
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        let per_pixel = dim_out / (shape.height * shape.width);
        let widths = self.upper_widths(per_pixel);
        let last = widths.len() - 2;
        let upper = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let config = Conv2dConfig::new([w[0], w[1]], [1, 1]);
                if i == last {
                    config.with_initializer(Initializer::Zeros).init(device)
                } else {
                    config.init(device)
                }
            })
            .collect();
        PaperConvNet {
            conv,
            dense,
            upper,
            shape,
            basis: temporal_basis(steps, self.n_temporal_basis),
            steps,
            bumps: self.n_temporal_basis,
            outputs_per_pixel: per_pixel,
            conv_scale: 1.0 / (self.n_hidden_conv as f64).sqrt(),
            dense_scale: 1.0 / (self.n_hidden_dense_lower_output.max(1) as f64).sqrt(),
            dense_output: self.n_hidden_dense_lower_output,
            sigma_scale: if gaussian {
                1.0 / (steps as f64).sqrt()
            } else {
                1.0
            },
        }
    }
}

/// The temporal readout's weights, `[(T + 1) J]` row-major (row 0 unused): J Gaussian bumps
/// with centres linspace(-1, 1, J), width half their spacing, evaluated at linspace(-1, 1, T)
/// and normalised to sum to 1 at each step.
pub fn temporal_basis(steps: usize, j: usize) -> Vec<f32> {
    let linspace = |n: usize, k: usize| {
        if n == 1 {
            0.0
        } else {
            -1.0 + 2.0 * k as f64 / (n - 1) as f64
        }
    };
    let width = if j > 1 { 1.0 / (j - 1) as f64 } else { 1.0 };
    let mut out = vec![0.0f32; (steps + 1) * j];
    for t in 1..=steps {
        let x = linspace(steps, t - 1);
        let bumps: Vec<f64> = (0..j)
            .map(|i| (-(x - linspace(j, i)).powi(2) / (2.0 * width * width)).exp())
            .collect();
        let total: f64 = bumps.iter().sum();
        for (i, b) in bumps.iter().enumerate() {
            out[t * j + i] = (b / total) as f32;
        }
    }
    out
}

/// One multi-scale layer: each scale's 3x3 convolution of the pooled input, repeated back up,
/// summed over scales and divided by their number.
#[derive(Module, Debug)]
struct MultiScaleConv {
    scales: Vec<Conv2d>,
}

impl MultiScaleConv {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut pooled = x;
        let mut sum: Option<Tensor<4>> = None;
        for (s, layer) in self.scales.iter().enumerate() {
            if s > 0 {
                pooled = mean_pool2(pooled);
            }
            let mut y = conv(layer, pooled.clone());
            for _ in 0..s {
                y = repeat2(y);
            }
            sum = Some(match sum {
                Some(total) => total + y,
                None => y,
            });
        }
        let sum = sum.expect("at least one scale");
        let scales = self.scales.len();
        leaky_relu(if scales > 1 { sum / scales as f64 } else { sum })
    }
}

/// The paper's network (see [`PaperConvConfig`]).
#[derive(Module, Debug)]
pub struct PaperConvNet {
    conv: Vec<MultiScaleConv>,
    dense: Vec<Linear>,
    upper: Vec<Conv2d>,
    #[module(skip)]
    shape: ImageShape,
    /// [`temporal_basis`]'s table.
    #[module(skip)]
    basis: Vec<f32>,
    /// T.
    #[module(skip)]
    steps: usize,
    /// J.
    #[module(skip)]
    bumps: usize,
    #[module(skip)]
    outputs_per_pixel: usize,
    #[module(skip)]
    conv_scale: f64,
    #[module(skip)]
    dense_scale: f64,
    #[module(skip)]
    dense_output: usize,
    #[module(skip)]
    sigma_scale: f64,
}

impl PaperConvNet {
    /// The per-pixel coefficients, `[n, outputs_per_pixel J, h, w]`.
    fn coefficients(&self, x_t: Tensor<2>) -> Tensor<4> {
        let ImageShape { height, width, .. } = self.shape;
        let n = x_t.dims()[0];
        let mut y = to_images(x_t.clone(), self.shape);
        for layer in &self.conv {
            y = layer.forward(y);
        }
        let mut y = y * self.conv_scale;
        if !self.dense.is_empty() {
            let mut z = x_t;
            for layer in &self.dense {
                z = diffusion_kernels::linear_activation(
                    z,
                    layer.weight.val(),
                    layer.bias.as_ref().map(|b| b.val()),
                    Shift::None,
                    Activation::LeakyRelu,
                );
            }
            let z = z
                .reshape([n, height, width, self.dense_output])
                .permute([0, 3, 1, 2]);
            y = Tensor::cat(vec![y, z * self.dense_scale], 1);
        }
        let last = self.upper.len() - 1;
        for (i, layer) in self.upper.iter().enumerate() {
            y = conv(layer, y);
            if i < last {
                y = leaky_relu(y);
            }
        }
        y
    }

    /// The readout: coefficients `[n, o J, h, w]` weighted by each row's step weights
    /// (`[n, J]`, or `[1, J]` for every row) into `[n, o h w]`, `z_sigma` scaled.
    fn readout(&self, y: Tensor<4>, weights: Tensor<2>) -> Tensor<2> {
        let [n, _, h, w] = y.dims();
        let o = self.outputs_per_pixel;
        let j = weights.dims()[1];
        let m = weights.dims()[0];
        let z = (y.reshape([n, o, j, h, w]) * weights.reshape([m, 1, j, 1, 1]))
            .sum_dim(2)
            .reshape([n, o, h, w]);
        let z = if o.is_multiple_of(2) && self.sigma_scale != 1.0 {
            let c = o / 2;
            let mu = z.clone().narrow(1, 0, c);
            let sigma = z.narrow(1, c, c) * self.sigma_scale;
            Tensor::cat(vec![mu, sigma], 1)
        } else {
            z
        };
        to_rows(z)
    }

    fn basis_rows(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.basis.clone(), [self.steps + 1, self.bumps]),
            device,
        )
    }
}

impl ReverseNetwork for PaperConvNet {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
        let device = x_t.device();
        let weights = self.basis_rows(&device).select(0, t);
        self.readout(self.coefficients(x_t), weights)
    }

    fn forward_at(&self, x_t: Tensor<2>, t: usize) -> Tensor<2> {
        let device = x_t.device();
        let weights = self.basis_rows(&device).narrow(0, t, 1);
        self.readout(self.coefficients(x_t), weights)
    }
    fn splits_batches(&self) -> bool {
        true
    }
}
