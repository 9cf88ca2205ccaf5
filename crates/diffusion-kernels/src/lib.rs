//! A fused affine layer with its activation, `act(x W + b + s)`, for any Burn model (or none:
//! [`Activation::Identity`] is a plain affine layer with the same products).
//!
//! [`linear_activation`] takes Burn tensors on any device. On flex (Burn's pure-Rust CPU
//! backend, with or without autodiff) and in f32 it runs as a backend extension
//! ([`FusedLinear`], Burn's `#[backend_extension]`): the matrix product, then one vectorised,
//! multi-threaded pass for the bias, the shift and the activation; backward, one pass for the
//! activation's derivative from the saved output, then the products. Everywhere else (wgpu,
//! ndarray, other dtypes) it is Burn's own operations, so a model written with it runs on every
//! backend and gets the same values to within f32 rounding.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use diffusion_kernels::{Activation, Shift, linear_activation};
//!
//! let device = Device::flex().autodiff();
//! let x = Tensor::<2>::from_floats([[1.0, -2.0]], &device);
//! let w = Tensor::<2>::from_floats([[0.5, 1.0, 0.0], [0.25, 0.0, 1.0]], &device).require_grad();
//! let b = Tensor::<1>::from_floats([0.0, 0.5, 2.0], &device);
//! let y = linear_activation(x, w.clone(), Some(b), Shift::None, Activation::Relu);
//! assert_eq!(y.to_data().to_vec::<f32>().unwrap(), vec![0.0, 1.5, 0.0]);
//! let grads = y.sum().backward();
//! // d/dw of relu(x w + b) summed: x where the unit is on, 0 elsewhere
//! let gw = w.grad(&grads).unwrap();
//! assert_eq!(gw.to_data().to_vec::<f32>().unwrap(), vec![0.0, 1.0, 0.0, 0.0, -2.0, 0.0]);
//! ```
//!
//! The kernels' ISA is picked at run time ([`Isa::detect`]): AVX-512 where the CPU has it, else
//! AVX2 with FMA, else the target's baseline; the environment variable [`ISA_VARIABLE`]
//! (`DIFFUSION_KERNELS_ISA=avx2` or `base`) caps it, to test and time the narrower kernels.
//!
//! Beside the layer: [`readout_rows`] (an affine readout of its own per row, read in place),
//! [`activate`] (an activation alone), [`product`] (gemm straight into the output),
//! [`kl_diag_gaussian`] (the diagonal Gaussian KL per row, one operation each way), and
//! [`FusedAdam`], Burn's Adam to the bit as one pass per parameter on flex.

mod adam;
// without flex only `Isa` and `AdamScalars` are used (the kernels run on flex alone)
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
#[macro_use]
mod math;

#[cfg(feature = "flex")]
mod attention;
#[cfg(feature = "flex")]
mod concat;
#[cfg(feature = "flex")]
mod conv;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod norm;
#[cfg(feature = "flex")]
mod norm_math;
#[cfg(feature = "flex")]
mod upsample;
mod workers;

pub use adam::{AdamScalars, FusedAdam};
#[cfg(feature = "flex")]
pub use attention::{AttentionBackward, FusedAttention};
#[cfg(feature = "flex")]
pub use concat::{ConcatBackward, FusedConcat};
#[cfg(feature = "flex")]
pub use conv::{ConvAdd, ConvBackward, FusedConv, FusedNormConv, NormConvBackward};
#[cfg(feature = "flex")]
pub use flex::{
    FusedAdamStep, FusedGaussianKl, FusedLinear, FusedLinearBackward, GaussianKlBackward,
};
pub use math::{ISA_VARIABLE, Isa};
#[cfg(feature = "flex")]
pub use norm::{FusedGroupNorm, GroupNormBackward};
#[cfg(feature = "flex")]
pub use upsample::{FusedUpsample, UpsampleBackward};
pub use workers::{BusyWorkers, busy_workers, map_parallel, worker_threads};

use burn::tensor::{DType, Device, Int, Tensor, activation};

/// The slope of [`Activation::LeakyRelu`] for negative inputs (the paper's reference code's).
pub const LEAKY_RELU_SLOPE: f32 = 0.05;

/// The activations the fused layer has kernels for: each derivative is a function of the output,
/// so the backward pass keeps only the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// ln(1 + e^x); derivative 1 - e^-y.
    Softplus,
    /// 1 / (1 + e^-x); derivative y (1 - y).
    Sigmoid,
    /// tanh(x); derivative 1 - y^2.
    Tanh,
    /// ln(1 / (1 + e^-x)) = -softplus(-x); derivative 1 - e^y.
    LogSigmoid,
    /// max(x, 0); derivative 1 where y > 0.
    Relu,
    /// x where x > 0, [`LEAKY_RELU_SLOPE`] x elsewhere (the paper's reference code's
    /// nonlinearity); derivative 1 where y >= 0, the slope elsewhere.
    LeakyRelu,
    /// x: a plain affine layer (a readout); the backward pass has no element-wise step.
    Identity,
}

impl Activation {
    /// Every activation the fused layer has.
    pub const ALL: [Activation; 7] = [
        Self::Softplus,
        Self::Sigmoid,
        Self::Tanh,
        Self::LogSigmoid,
        Self::Relu,
        Self::LeakyRelu,
        Self::Identity,
    ];

    /// The activation of `x` by Burn's own operations (softplus as -ln sigmoid(-x), one
    /// operation forward and one backward, no overflow for any x).
    pub fn apply(self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Softplus => activation::log_sigmoid(x.neg()).neg(),
            Self::Sigmoid => activation::sigmoid(x),
            Self::Tanh => activation::tanh(x),
            Self::LogSigmoid => activation::log_sigmoid(x),
            Self::Relu => activation::relu(x),
            Self::LeakyRelu => activation::leaky_relu(x, LEAKY_RELU_SLOPE as f64),
            Self::Identity => x,
        }
    }
}

/// What a fused layer adds to `x w + bias` before the activation.
// Built for one call and consumed by it: the size of the `Rows` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Default)]
pub enum Shift {
    /// Nothing.
    #[default]
    None,
    /// A term per row (`[n, h]`) or one for every row (`[1, h]`).
    Dense(Tensor<2>),
    /// Row `index[r]` of `table` (`[rows, h]`) for row r: a learned per-step embedding, read in
    /// place on flex (no gathered copy forward, the rows' gradients scattered straight back).
    Rows {
        /// `[rows, h]`.
        table: Tensor<2>,
        /// `[n]`, each in `0..rows`.
        index: Tensor<1, Int>,
    },
}

impl Shift {
    /// `pre + shift` by Burn's own operations (the table's rows gathered).
    pub fn add_to(self, pre: Tensor<2>) -> Tensor<2> {
        match self {
            Self::None => pre,
            Self::Dense(s) => pre + s,
            Self::Rows { table, index } => pre + table.select(0, index),
        }
    }
}

/// `act(x w + bias + shift)`: `x` `[n, k]`, `w` `[k, h]` (Burn's `Linear` layout), `bias`
/// `[h]`. Fused on flex in f32 (see the crate's documentation), Burn's operations elsewhere.
pub fn linear_activation(
    x: Tensor<2>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
    shift: Shift,
    activation: Activation,
) -> Tensor<2> {
    if fused_here(&x) {
        #[cfg(feature = "flex")]
        return fused(x, w, bias, shift, activation);
    }
    let mut pre = x.matmul(w);
    if let Some(b) = bias {
        pre = pre + b.unsqueeze_dim(0);
    }
    activation.apply(shift.add_to(pre))
}

/// `act(x)` element by element: on flex in f32 the fused layer's vectorised kernel (and, with
/// autodiff, its derivative from the output), elsewhere [`Activation::apply`].
pub fn activate(x: Tensor<2>, activation: Activation) -> Tensor<2> {
    if fused_here(&x) {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            return Tensor::from_dispatch(<Dispatch as FusedLinear>::activate(
                x.into_dispatch(),
                activation,
            ));
        }
    }
    activation.apply(x)
}

/// A separate affine readout per row: row r of the `[n, m]` result is `x[r] W_i + bias[i]` for
/// i = `index[r]`, where row i of `weight` (`[rows, k m]`) holds the `[k, m]` matrix W_i
/// row-major and `bias` is `[rows, m]` (as a network with one readout per diffusion step has).
/// On flex in f32 the matrices are read in place and their gradients summed straight into the
/// tables' rows; elsewhere Burn's operations (the rows' matrices gathered, a batched product).
pub fn readout_rows(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Tensor<2>,
    index: Tensor<1, Int>,
) -> Tensor<2> {
    if fused_here(&x) && weight.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            return Tensor::from_dispatch(<Dispatch as FusedLinear>::readout_rows(
                x.into_dispatch(),
                weight.into_dispatch(),
                bias.into_dispatch(),
                index.into_dispatch(),
            ));
        }
    }
    let [n, k] = x.dims();
    let m = bias.dims()[1];
    let w: Tensor<3> = weight.select(0, index.clone()).reshape([n, k, m]);
    let z: Tensor<3> = x.unsqueeze_dim::<3>(1).matmul(w);
    z.reshape([n, m]) + bias.select(0, index)
}

/// The matrix product `a b` of 2-D tensors: on flex in f32 by `gemm` straight into the output
/// (the product the fused layer and its backward use), elsewhere Burn's `matmul`.
pub fn product(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    if fused_here(&a) && b.dtype() == DType::F32 {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            return Tensor::from_dispatch(<Dispatch as FusedLinear>::product(
                a.into_dispatch(),
                b.into_dispatch(),
            ));
        }
    }
    a.matmul(b)
}

/// KL(N(mu_q, diag var_q) || N(mu_p, diag exp(logvar_p))) per row, in nats, summed over the d
/// columns: `mu_q`, `mu_p`, `logvar_p` `[n, d]`; `var_q` and `logvar_q` `[n, 1]` (broadcast)
/// or `[n, d]`. On flex in f32 one pass forward and one backward (Burn's composition is about a
/// dozen operations each way, each a pass and an allocation), elsewhere that composition,
/// [`diffusion_core::kl_diag_gaussian`].
pub fn kl_diag_gaussian(
    mu_q: Tensor<2>,
    var_q: Tensor<2>,
    logvar_q: Tensor<2>,
    mu_p: Tensor<2>,
    logvar_p: Tensor<2>,
) -> Tensor<1> {
    let inputs = [&mu_q, &var_q, &logvar_q, &mu_p, &logvar_p];
    if inputs.iter().all(|t| fused_here(t)) {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            return Tensor::from_dispatch(<Dispatch as FusedGaussianKl>::gaussian_kl(
                mu_q.into_dispatch(),
                var_q.into_dispatch(),
                logvar_q.into_dispatch(),
                mu_p.into_dispatch(),
                logvar_p.into_dispatch(),
            ));
        }
    }
    diffusion_core::kl_diag_gaussian(mu_q, var_q, logvar_q, mu_p, logvar_p)
}

/// A 2-D convolution of `x` `[n, c_in, h, w]` with `weight` `[c_out, c_in, k, k]` (square),
/// `stride` and `padding` on every side, no dilation, one group, plus `bias` `[c_out]`:
/// `[n, c_out, h_out, w_out]`. On flex in f32 a direct kernel (a 3x3 convolution that keeps the
/// size, on a CPU with AVX2 or AVX-512) or im2col and matrix products, forward and backward
/// ([`FusedConv`]); elsewhere Burn's `conv2d`.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    conv2d_plus(
        x,
        weight,
        bias,
        ConvSpec { stride, padding },
        ConvPlus::Nothing,
    )
}

/// A convolution's stride and padding (both sides, both axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    /// The step between output pixels, in input pixels.
    pub stride: usize,
    /// Zero pixels added on every side.
    pub padding: usize,
}

impl ConvSpec {
    /// The output side for an input side and kernel side.
    pub fn output_side(&self, input: usize, kernel: usize) -> usize {
        (input + 2 * self.padding - kernel) / self.stride + 1
    }
}

/// What [`conv2d_plus`] adds to a convolution's output.
#[derive(Clone, Debug)]
pub enum ConvPlus {
    /// Nothing.
    Nothing,
    /// Each image's own value per output channel, `[n, c_out]` (or `[1, c_out]` for every
    /// image): a U-Net's embedding of t.
    Shift(Tensor<2>),
    /// A tensor of the output's shape: a residual connection.
    Residual(Tensor<4>),
}

/// Whether [`conv2d_plus`]'s operands are ones the fused convolution takes: a square kernel,
/// every tensor f32 on flex.
fn conv_fused_here(x: &Tensor<4>, weight: &Tensor<4>, plus: &ConvPlus) -> bool {
    let [_, _, kh, kw] = weight.dims();
    kh == kw
        && fused_here(x)
        && fused_here(weight)
        && match plus {
            ConvPlus::Nothing => true,
            ConvPlus::Shift(s) => fused_here(s),
            ConvPlus::Residual(r) => fused_here(r),
        }
}

/// [`conv2d`] plus a per-image shift or a residual ([`ConvPlus`]). On flex in f32 the addition
/// is where the output starts before the product is added to it (no pass of its own either
/// way); elsewhere Burn's `conv2d` and an addition.
pub fn conv2d_plus(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    spec: ConvSpec,
    plus: ConvPlus,
) -> Tensor<4> {
    if conv_fused_here(&x, &weight, &plus) {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            let c_out = weight.dims()[0];
            let bias = bias.unwrap_or_else(|| Tensor::zeros([c_out], &x.device()));
            let (x, w, b) = (
                x.into_dispatch(),
                weight.into_dispatch(),
                bias.into_dispatch(),
            );
            return Tensor::from_dispatch(match plus {
                ConvPlus::Nothing => <Dispatch as FusedConv>::conv2d_fused(x, w, b, spec),
                ConvPlus::Shift(s) => {
                    <Dispatch as FusedConv>::conv2d_shifted(x, w, b, s.into_dispatch(), spec)
                }
                ConvPlus::Residual(r) => {
                    <Dispatch as FusedConv>::conv2d_residual(x, w, b, r.into_dispatch(), spec)
                }
            });
        }
    }
    let ConvSpec { stride, padding } = spec;
    let y = burn::tensor::module::conv2d(
        x,
        weight,
        bias,
        burn::tensor::ops::ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
    );
    match plus {
        ConvPlus::Nothing => y,
        ConvPlus::Shift(s) => {
            let [rows, c] = s.dims();
            y + s.reshape([rows, c, 1, 1])
        }
        ConvPlus::Residual(r) => y + r,
    }
}

/// A group norm's constants: the number of groups, epsilon, and whether SiLU follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    /// Channel groups (the channels must divide into them).
    pub groups: usize,
    /// Added to the variance.
    pub epsilon: f64,
    /// Whether `silu(y) = y sigmoid(y)` is applied after the affine map.
    pub silu: bool,
}

/// GroupNorm of `x` `[n, c, h, w]` over `spec.groups` groups of channels per image, the affine
/// map `gamma`, `beta` (`[c]`), then SiLU when `spec.silu`. On flex in f32 one pass forward and
/// two backward ([`FusedGroupNorm`]); elsewhere Burn's operations (as `burn::nn::GroupNorm`
/// computes it).
pub fn group_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, spec: NormSpec) -> Tensor<4> {
    if fused_here(&x) && fused_here(&gamma) && fused_here(&beta) {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            return Tensor::from_dispatch(<Dispatch as FusedGroupNorm>::group_norm_fused(
                x.into_dispatch(),
                gamma.into_dispatch(),
                beta.into_dispatch(),
                spec,
            ));
        }
    }
    let [n, c, h, w] = x.dims();
    let grouped = x.reshape([n, spec.groups, c / spec.groups * h * w]);
    let mean = grouped.clone().mean_dim(2);
    let centred = grouped - mean;
    let var = centred.clone().powf_scalar(2.0).mean_dim(2);
    let normed = (centred / (var + spec.epsilon).sqrt()).reshape([n, c, h, w]);
    let y = normed * gamma.reshape([1, c, 1, 1]) + beta.reshape([1, c, 1, 1]);
    if spec.silu { activation::silu(y) } else { y }
}

/// [`conv2d_plus`] of [`group_norm`]'s output: a U-Net's `conv(silu(norm(x)))`, the norm's
/// constants `norm` and affine map `gamma`, `beta` (`[c_in]`). On flex in f32 one operation
/// ([`FusedNormConv`]) with the same values and gradients as the two, bit for bit: for a 3x3
/// convolution that keeps the size, of images at least 12 pixels wide, on a CPU with AVX2 or
/// AVX-512, each image is normalised straight into the zero-bordered planes the direct kernels
/// read (and the backward pass keeps), so the norm's output is never a tensor of its own; for
/// other convolutions the operation forms the norm's output first. Elsewhere [`group_norm`]
/// and [`conv2d_plus`].
#[allow(clippy::too_many_arguments)] // the operands of a norm and a convolution
pub fn norm_conv2d(
    x: Tensor<4>,
    (gamma, beta): (Tensor<1>, Tensor<1>),
    norm: NormSpec,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    spec: ConvSpec,
    plus: ConvPlus,
) -> Tensor<4> {
    if conv_fused_here(&x, &weight, &plus) && fused_here(&gamma) && fused_here(&beta) {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            let c_out = weight.dims()[0];
            let bias = bias.unwrap_or_else(|| Tensor::zeros([c_out], &x.device()));
            let (x, g, b) = (
                x.into_dispatch(),
                gamma.into_dispatch(),
                beta.into_dispatch(),
            );
            let (w, bias) = (weight.into_dispatch(), bias.into_dispatch());
            return Tensor::from_dispatch(match plus {
                ConvPlus::Nothing => {
                    <Dispatch as FusedNormConv>::norm_conv2d(x, g, b, w, bias, norm, spec)
                }
                ConvPlus::Shift(s) => <Dispatch as FusedNormConv>::norm_conv2d_shifted(
                    x,
                    g,
                    b,
                    w,
                    bias,
                    s.into_dispatch(),
                    norm,
                    spec,
                ),
                ConvPlus::Residual(r) => <Dispatch as FusedNormConv>::norm_conv2d_residual(
                    x,
                    g,
                    b,
                    w,
                    bias,
                    r.into_dispatch(),
                    norm,
                    spec,
                ),
            });
        }
    }
    conv2d_plus(group_norm(x, gamma, beta, norm), weight, bias, spec, plus)
}

/// Self-attention over positions: `qkv` `[b, 3d, p]` (each entry's d query, d key and d value
/// channels over p positions, in that order) to `[b, d, p]`,
/// `a[c, i] = sum_j softmax_j(q_i . k_j / sqrt(d)) v[c, j]`. On flex in f32 one pass per entry
/// each way, the entries in parallel ([`FusedAttention`]); elsewhere Burn's operations
/// ([`attention_composed`]).
pub fn attention(qkv: Tensor<3>) -> Tensor<3> {
    if fused_here(&qkv) {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            return Tensor::from_dispatch(<Dispatch as FusedAttention>::attention_fused(
                qkv.into_dispatch(),
            ));
        }
    }
    attention_composed(qkv)
}

/// [`attention`] by Burn's operations, as it runs off flex: q and k each scaled by d^-1/4,
/// their product, a softmax over the keys, the product with v.
pub fn attention_composed(qkv: Tensor<3>) -> Tensor<3> {
    let [_, three_d, _] = qkv.dims();
    assert!(
        three_d % 3 == 0 && three_d > 0,
        "queries, keys and values of d channels each: 3d channels, not {three_d}"
    );
    let d = three_d / 3;
    let scale = 1.0 / (d as f64).sqrt().sqrt();
    let q = qkv.clone().narrow(1, 0, d) * scale;
    let k = qkv.clone().narrow(1, d, d) * scale;
    let v = qkv.narrow(1, 2 * d, d);
    // [b, p (queries), p (keys)]
    let weights = activation::softmax(q.swap_dims(1, 2).matmul(k), 2);
    v.matmul(weights.swap_dims(1, 2))
}

/// `a` `[n, ca, h, w]` and `b` `[n, cb, h, w]` side by side: `[n, ca + cb, h, w]`, each image's
/// channels of `a` then of `b` (`Tensor::cat(vec![a, b], 1)`). On flex in f32 the images copied
/// in parallel each way, the gradient split into two contiguous parts ([`FusedConcat`]);
/// elsewhere Burn's `cat`.
pub fn concat_channels(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    if fused_here(&a) && fused_here(&b) {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            return Tensor::from_dispatch(<Dispatch as FusedConcat>::concat_channels_fused(
                a.into_dispatch(),
                b.into_dispatch(),
            ));
        }
    }
    Tensor::cat(vec![a, b], 1)
}

/// Nearest-neighbour upsampling by 2 of `x` `[n, c, h, w]`: `[n, c, 2h, 2w]`, each value over
/// a 2x2 block. On flex in f32 one pass each way over the planes in parallel
/// ([`FusedUpsample`]); elsewhere a reshape, an expand and a reshape back.
pub fn upsample2(x: Tensor<4>) -> Tensor<4> {
    if fused_here(&x) {
        #[cfg(feature = "flex")]
        {
            use burn::backend::Dispatch;
            return Tensor::from_dispatch(<Dispatch as FusedUpsample>::upsample2_fused(
                x.into_dispatch(),
            ));
        }
    }
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1])
        .expand([n, c, h, 2, w, 2])
        .reshape([n, c, 2 * h, 2 * w])
}

/// Whether the fused kernels run for `x` (in [`linear_activation`], [`FusedAdam`] and the
/// rest): f32 on a flex device.
pub fn fused_here<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && fused_device(&x.device())
}

/// Whether `device` is one the fused kernels run on (flex, or flex under autodiff).
pub fn fused_device(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        use burn::backend::DispatchDevice;
        matches!(
            device.clone().inner().as_dispatch(),
            DispatchDevice::Flex(_)
        )
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

#[cfg(feature = "flex")]
fn fused(
    x: Tensor<2>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
    shift: Shift,
    activation: Activation,
) -> Tensor<2> {
    use burn::backend::Dispatch;
    let h = w.dims()[1];
    let device = x.device();
    let bias = bias.unwrap_or_else(|| Tensor::zeros([h], &device));
    let shift = match shift {
        Shift::Rows { table, index } => {
            return Tensor::from_dispatch(<Dispatch as FusedLinear>::linear_activation_rows(
                x.into_dispatch(),
                w.into_dispatch(),
                bias.into_dispatch(),
                table.into_dispatch(),
                index.into_dispatch(),
                activation,
            ));
        }
        Shift::Dense(s) => s,
        Shift::None => Tensor::zeros([1, h], &device),
    };
    let out = <Dispatch as FusedLinear>::linear_activation(
        x.into_dispatch(),
        w.into_dispatch(),
        bias.into_dispatch(),
        shift.into_dispatch(),
        activation,
    );
    Tensor::from_dispatch(out)
}

/// Makes the calling thread's floating point flush subnormal results to zero and read subnormal
/// inputs as zero (x86-64: the FTZ and DAZ bits of MXCSR; elsewhere it does nothing and returns
/// `false`). On Linux, threads created afterwards start with the same setting, so call it first
/// in `main`, before any thread pool starts (elsewhere, call it on each thread).
///
/// Long training runs drift into subnormal numbers (Adam's moments and the gradients of weights
/// that have settled decay below 1.2e-38), which x86 cores compute through microcode assists at a
/// fraction of the normal rate: a Swiss-roll run slowed from 460 to about 85 steps/s by step
/// 160,000, and resumed with subnormals flushed ran at 235 steps/s again. Values that small
/// are zero to a float32 model anyway; a run stays deterministic either way.
pub fn flush_subnormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // FTZ (bit 15) and DAZ (bit 6); every x86-64 CPU has SSE2 and so MXCSR
        #[allow(deprecated)]
        // SAFETY: changes only the rounding of subnormal values, for this thread
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            _mm_setcsr(_mm_getcsr() | 0x8040);
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
