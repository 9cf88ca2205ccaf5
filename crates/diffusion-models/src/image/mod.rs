//! Networks over images: rows of `channels * height * width` values (channel-first, row-major
//! pixels), reshaped inside `forward`, so the processes, bound, samplers, EMA, checkpoints and
//! backends take them as they take the MLPs.
//!
//! - [`Unet`]: the U-Net of improved diffusion (Nichol and Dhariwal 2021): residual blocks with
//!   GroupNorm and SiLU, a sinusoidal embedding of t added in every block, channel multipliers
//!   per resolution, self-attention at chosen resolutions, `2c` output channels (`[z_mu,
//!   z_sigma]`) for a learned variance.
//! - [`PaperConvNet`]: the paper's multi-scale convolutional network with a dense branch, per-pixel
//!   dense layers and the temporal-basis readout (SPEC section 7; appendix D.2.1 of the paper).
//!
//! Both are built by [`crate::ModelConfig::init_for`] from the `[model.unet]` or
//! `[model.conv]` table of a config with `kind = "unet"` or `kind = "paper-conv"`.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use diffusion_data::ImageShape;
//! use diffusion_models::ReverseNetwork;
//! use diffusion_models::image::UnetConfig;
//!
//! let device = Device::flex();
//! let shape = ImageShape { channels: 1, height: 8, width: 8 };
//! let config = UnetConfig { channels: 8, channel_mult: vec![1, 2], groups: 4, attention_resolutions: vec![4], ..UnetConfig::default() };
//! let net = config.init(shape, 2 * 64, &device);
//! let z = net.forward_at(Tensor::zeros([3, 64], &device), 5);
//! assert_eq!(z.dims(), [3, 128]);
//! ```

mod paper;
mod unet;

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{Device, Int, Tensor};
use diffusion_data::ImageShape;
use diffusion_kernels::{ConvPlus, ConvSpec};

pub use paper::{PaperConvConfig, PaperConvNet};
pub use unet::{Unet, UnetConfig};

/// A convolution layer's forward pass through [`diffusion_kernels::conv2d`] (on flex the
/// direct 3x3 kernels or im2col and matrix products, Burn's `conv2d` elsewhere), with the
/// layer's own weights, stride
/// and padding (symmetric, as every layer here has).
pub(crate) fn conv(layer: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_plus(layer, x, ConvPlus::Nothing)
}

/// [`conv`] plus a per-image shift or a residual, added where the output starts on flex
/// ([`diffusion_kernels::conv2d_plus`]).
pub(crate) fn conv_plus(layer: &Conv2d, x: Tensor<4>, plus: ConvPlus) -> Tensor<4> {
    diffusion_kernels::conv2d_plus(
        x,
        layer.weight.val(),
        layer.bias.as_ref().map(|b| b.val()),
        conv_spec(layer),
        plus,
    )
}

/// A convolution layer's stride and padding.
fn conv_spec(layer: &Conv2d) -> ConvSpec {
    let padding = match layer.padding {
        PaddingConfig2d::Explicit(p, ..) => p,
        PaddingConfig2d::Valid => 0,
        PaddingConfig2d::Same => layer.kernel_size[0] / 2,
    };
    ConvSpec {
        stride: layer.stride[0],
        padding,
    }
}

/// [`conv_plus`] of [`norm`]'s output (`silu` as there), through
/// [`diffusion_kernels::norm_conv2d`]: on flex one operation, the norm's output never a tensor
/// of its own.
pub(crate) fn norm_conv_plus(
    (norm_layer, silu): (&GroupNorm, bool),
    layer: &Conv2d,
    x: Tensor<4>,
    plus: ConvPlus,
) -> Tensor<4> {
    let Some((affine, spec)) = affine_norm(norm_layer, silu) else {
        return conv_plus(layer, norm(norm_layer, x, silu), plus);
    };
    let bias = layer.bias.as_ref().map(|b| b.val());
    let (weight, conv) = (layer.weight.val(), conv_spec(layer));
    diffusion_kernels::norm_conv2d(x, affine, spec, weight, bias, conv, plus)
}

/// A GroupNorm layer's forward pass, then SiLU when `silu`, through
/// [`diffusion_kernels::group_norm`] (one pass each way on flex, Burn's operations elsewhere).
pub(crate) fn norm(layer: &GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    let Some(((gamma, beta), spec)) = affine_norm(layer, silu) else {
        let y = layer.forward(x);
        return if silu {
            burn::tensor::activation::silu(y)
        } else {
            y
        };
    };
    diffusion_kernels::group_norm(x, gamma, beta, spec)
}

/// A GroupNorm layer's affine map (gamma, beta) and its constants for the fused kernels, then
/// SiLU when `silu`; `None` for a layer without the affine map.
fn affine_norm(
    layer: &GroupNorm,
    silu: bool,
) -> Option<((Tensor<1>, Tensor<1>), diffusion_kernels::NormSpec)> {
    let (Some(gamma), Some(beta)) = (&layer.gamma, &layer.beta) else {
        return None;
    };
    let spec = diffusion_kernels::NormSpec {
        groups: layer.num_groups,
        epsilon: layer.epsilon,
        silu,
    };
    Some(((gamma.val(), beta.val()), spec))
}

/// Rows `[n, c h w]` as images `[n, c, h, w]`.
pub(crate) fn to_images(x: Tensor<2>, shape: ImageShape) -> Tensor<4> {
    let n = x.dims()[0];
    x.reshape([n, shape.channels, shape.height, shape.width])
}

/// Images `[n, c, h, w]` as rows `[n, c h w]`.
pub(crate) fn to_rows(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c * h * w])
}

/// Mean over 2x2 blocks: `[n, c, h, w]` to `[n, c, h/2, w/2]` (h and w even).
pub(crate) fn mean_pool2(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / 2, 2, w / 2, 2])
        .mean_dim(5)
        .mean_dim(3)
        .reshape([n, c, h / 2, w / 2])
}

/// Each pixel repeated into a 2x2 block: `[n, c, h, w]` to `[n, c, 2h, 2w]`
/// ([`diffusion_kernels::upsample2`]).
pub(crate) fn repeat2(x: Tensor<4>) -> Tensor<4> {
    diffusion_kernels::upsample2(x)
}

/// The steps of a batch as a column of floats, `[n, 1]` (one per row) or `[1, 1]`.
pub(crate) fn step_column(t: &Tensor<1, Int>) -> Tensor<2> {
    let n = t.dims()[0];
    t.clone().float().reshape([n, 1])
}

/// A one-row step column for every row at step `t`.
pub(crate) fn one_step(t: usize, device: &Device) -> Tensor<2> {
    Tensor::<1>::from_floats([t as f32], device).reshape([1, 1])
}

/// Why an image network cannot be built for a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ImageConfigError(pub String);

#[cfg(test)]
pub(crate) mod tests;
