//! A group norm (with SiLU after it, or not) and the convolution that reads it, as one Burn
//! backend extension for flex with its backward pass for autodiff: a U-Net's `conv(silu(
//! norm(x)))`. On the direct kernels (a 3x3 convolution that keeps the size, images at least
//! [`MIN_WIDTH`] wide) each image is normalised straight into the zero-bordered planes the
//! convolution reads and its backward pass keeps: the group norm's output is never a tensor
//! of its own, written to memory and read back to be padded. Backward, the convolution's
//! backward pass from the kept planes, then the group norm's from the saved input and
//! moments, in one operation. The values and gradients are those of
//! [`crate::FusedGroupNorm`] followed by [`crate::FusedConv`], bit for bit.

use std::mem::MaybeUninit;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata, backend_extension};

use super::{Added, ConvAdd, ConvBackward, Dims, Start, convolve_direct};
use super::{flex_forward_normed, values};
use crate::flex::{record_op_saving, register_gradients};
use crate::math::Isa;
use crate::norm::{self, GroupNormBackward};
use crate::norm_math::Moments;
use crate::{ConvSpec, NormSpec};

/// The group norm and convolution as one operation. Any backend can implement it; this crate
/// does for [`Flex`] and, with a backward pass, for [`Autodiff`] over any backend that does.
#[backend_extension(Autodiff, Flex)]
pub trait FusedNormConv: Backend {
    /// [`crate::FusedConv::conv2d_fused`] of [`crate::FusedGroupNorm::group_norm_fused`]'s output:
    /// `x` `[n, c_in, h, w]`, `gamma` and `beta` `[c_in]`, `weight` `[c_out, c_in, k, k]`,
    /// `bias` `[c_out]`.
    #[allow(clippy::too_many_arguments)] // the operands of a norm and a convolution
    fn norm_conv2d(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;

    /// [`FusedNormConv::norm_conv2d`] plus `shift` `[n, c_out]` (or `[1, c_out]`), as
    /// [`crate::FusedConv::conv2d_shifted`].
    #[allow(clippy::too_many_arguments)] // the operands of a norm and a convolution
    fn norm_conv2d_shifted(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;

    /// [`FusedNormConv::norm_conv2d`] plus `residual`, of the output's shape, as
    /// [`crate::FusedConv::conv2d_residual`].
    #[allow(clippy::too_many_arguments)] // the operands of a norm and a convolution
    fn norm_conv2d_residual(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;
}

/// [`FusedNormConv`]'s backward pass on the inner backend: the group norm's and the
/// convolution's.
pub trait NormConvBackward: FusedNormConv + GroupNormBackward + ConvBackward {
    /// The forward pass ([`FusedNormConv::norm_conv2d`] plus what `add` says), the group
    /// norm's moments ([`GroupNormBackward::group_norm_saving`]'s) and what the convolution's
    /// backward pass reads as its input ([`ConvBackward::conv2d_saving`]'s: flex keeps a 3x3
    /// convolution's padded planes of the normalised input).
    #[allow(clippy::too_many_arguments)] // the operands of a norm and a convolution
    fn norm_conv2d_saving(
        x: FloatTensor<Self>,
        (gamma, beta): (FloatTensor<Self>, FloatTensor<Self>),
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        add: ConvAdd<FloatTensor<Self>>,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> [FloatTensor<Self>; 3] {
        let (z, moments) = Self::group_norm_saving(x, gamma, beta, norm);
        let (out, kept) = Self::conv2d_saving(z, weight, bias, add, spec);
        [out, moments, kept]
    }
}

/// Images at least this wide are normalised straight into their padded planes: a row fills
/// most of the vector of 16 values the norm computes at a time, past its end.
const MIN_WIDTH: usize = 12;

/// Whether [`convolve`] runs the convolution `d` of a group norm: a 3x3 one on the direct
/// kernels that keeps the size ([`Dims::flat`]), of images at least [`MIN_WIDTH`] wide (the
/// others through the group norm's output).
pub(super) fn fused(d: &Dims) -> bool {
    d.flat() && d.c_in > 0 && d.w >= MIN_WIDTH
}

/// The convolution `d` of the group norm of `x` (`norm`), each image normalised straight into
/// the zero-bordered planes the direct kernels read ([`fused`]); with `keep`, the planes `[n,
/// c_in, plane]`. Returns the output, the planes kept and the groups' moments (in the images'
/// order, [`Moments::VALUES`] values a group).
pub(super) fn convolve(
    d: &Dims,
    x: &FlexTensor,
    (gamma, beta, norm): (&FlexTensor, &FlexTensor, NormSpec),
    ws: &[f32],
    start: Start<'_>,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>, FlexTensor) {
    assert!(fused(d), "a convolution the norm writes the planes of");
    let (xs, affine) = (values(x), (values(gamma), values(beta)));
    let (isa, padded) = (Isa::detect(), d.flat_geometry(1).padded());
    let in_len = d.c_in * d.h * d.w;
    let fill = |i: usize, planes: &mut [MaybeUninit<f32>]| {
        let mut moments = vec![Moments::default(); norm.groups];
        let image = &xs[i * in_len..][..in_len];
        let into = (padded, planes);
        norm::image_forward_padded(isa, image, affine, norm, into, &mut moments);
        moments
    };
    // SAFETY: `image_forward_padded` writes every value of an image's planes
    let (out, kept, moments) = unsafe { convolve_direct(d, fill, ws, start, keep) };
    let moments: Vec<Moments> = moments.into_iter().flatten().collect();
    (out, kept, norm::moments_tensor(&moments))
}

/// Flex's forward pass of each [`FusedNormConv`] operation, and with `keep` its moments and
/// kept input.
fn flex_norm_forward(
    x: FlexTensor,
    (gamma, beta): (FlexTensor, FlexTensor),
    weight: FlexTensor,
    bias: FlexTensor,
    add: ConvAdd<FlexTensor>,
    (norm, spec): (NormSpec, ConvSpec),
    keep: bool,
) -> (FlexTensor, Option<(FlexTensor, FlexTensor)>) {
    let norm = Some((gamma, beta, norm));
    let (out, kept, moments) = flex_forward_normed(x, norm, weight, bias, add, spec, keep);
    let moments = moments.expect("a normalised input's moments");
    (out, kept.map(|kept| (moments, kept)))
}

impl FusedNormConv for Flex {
    fn norm_conv2d(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FlexTensor {
        let (affine, specs) = ((gamma, beta), (norm, spec));
        flex_norm_forward(x, affine, weight, bias, ConvAdd::Nothing, specs, false).0
    }

    fn norm_conv2d_shifted(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        shift: FlexTensor,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FlexTensor {
        let (affine, specs, add) = ((gamma, beta), (norm, spec), ConvAdd::Shift(shift));
        flex_norm_forward(x, affine, weight, bias, add, specs, false).0
    }

    fn norm_conv2d_residual(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        residual: FlexTensor,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FlexTensor {
        let (affine, specs, add) = ((gamma, beta), (norm, spec), ConvAdd::Residual(residual));
        flex_norm_forward(x, affine, weight, bias, add, specs, false).0
    }
}

impl NormConvBackward for Flex {
    fn norm_conv2d_saving(
        x: FlexTensor,
        affine: (FlexTensor, FlexTensor),
        weight: FlexTensor,
        bias: FlexTensor,
        add: ConvAdd<FlexTensor>,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> [FlexTensor; 3] {
        let (out, saved) = flex_norm_forward(x, affine, weight, bias, add, (norm, spec), true);
        let (moments, kept) = saved.expect("kept when asked");
        [out, moments, kept]
    }
}

/// What the backward pass keeps: the input, its groups' moments, gamma, beta, the norm's
/// spec; the convolution's kept input, its weights and spec.
type State<B> = (
    [FloatTensor<B>; 4],
    NormSpec,
    (FloatTensor<B>, FloatTensor<B>),
    ConvSpec,
);

/// The gradients of x, gamma, beta, the weights and the bias (each where `wanted`) from the
/// output's.
fn gradients<B: NormConvBackward>(
    grad: FloatTensor<B>,
    ([x, moments, gamma, beta], norm, (kept, weight), spec): State<B>,
    wanted: [bool; 5],
) -> [Option<FloatTensor<B>>; 5] {
    let [x_, gamma_, beta_, w_, b_] = wanted;
    let want_z = x_ || gamma_ || beta_;
    let [dz, dw, db] = B::conv2d_backward(grad, kept, weight, spec, [want_z, w_, b_]);
    let [dx, dgamma, dbeta] = match dz {
        Some(dz) => B::group_norm_backward(dz, x, moments, gamma, beta, norm).map(Some),
        None => [None, None, None],
    };
    [dx, dgamma, dbeta, dw, db]
}

/// The backward pass of [`FusedNormConv::norm_conv2d`]: parents x, gamma, beta, weight, bias.
#[derive(Debug)]
struct NormConvBackwardOp;

impl<B: Backend + NormConvBackward> Backward<B, 5> for NormConvBackwardOp {
    type State = State<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_gradients::<B, _, 5>(ops, grads, gradients::<B>);
    }
}

/// The backward pass of the norm and convolution plus a shift or a residual: parents x,
/// gamma, beta, weight, bias, and the shift or the residual.
#[derive(Debug)]
struct NormConvPlusBackwardOp;

impl<B: Backend + NormConvBackward> Backward<B, 6> for NormConvPlusBackwardOp {
    type State = (State<B>, Added);

    fn backward(
        self,
        ops: Ops<Self::State, 6>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_gradients::<B, _, 6>(ops, grads, |grad, (state, added), wanted| {
            let [x_, g_, b_, w_, bias_, a_] = wanted;
            let added = a_.then(|| match added {
                Added::Shift(rows) => B::conv2d_shift_grad(grad.clone(), rows),
                Added::Residual => grad.clone(),
            });
            let [dx, dg, db, dw, dbias] = gradients::<B>(grad, state, [x_, g_, b_, w_, bias_]);
            [dx, dg, db, dw, dbias, added]
        });
    }
}

/// The inner backend's forward pass that `add` names and, when `tracked`, the backward pass's
/// state.
fn forward_recorded<B: NormConvBackward>(
    [x, gamma, beta, weight, bias]: [FloatTensor<B>; 5],
    add: ConvAdd<FloatTensor<B>>,
    (norm, spec): (NormSpec, ConvSpec),
    tracked: bool,
) -> (FloatTensor<B>, Option<State<B>>) {
    if !tracked {
        let out = match add {
            ConvAdd::Nothing => B::norm_conv2d(x, gamma, beta, weight, bias, norm, spec),
            ConvAdd::Shift(s) => {
                B::norm_conv2d_shifted(x, gamma, beta, weight, bias, s, norm, spec)
            }
            ConvAdd::Residual(r) => {
                B::norm_conv2d_residual(x, gamma, beta, weight, bias, r, norm, spec)
            }
        };
        return (out, None);
    }
    let affine = (gamma.clone(), beta.clone());
    let [out, moments, kept] =
        B::norm_conv2d_saving(x.clone(), affine, weight.clone(), bias, add, norm, spec);
    (
        out,
        Some(([x, moments, gamma, beta], norm, (kept, weight), spec)),
    )
}

impl<B: Backend + NormConvBackward, C: CheckpointStrategy> FusedNormConv for Autodiff<B, C> {
    fn norm_conv2d(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        record_op_saving::<B, C, _, 5>(
            NormConvBackwardOp,
            [x, gamma, beta, weight, bias],
            |inputs, tracked| {
                forward_recorded::<B>(inputs, ConvAdd::Nothing, (norm, spec), tracked)
            },
        )
    }

    fn norm_conv2d_shifted(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        let rows = shift.shape()[0];
        record_op_saving::<B, C, _, 6>(
            NormConvPlusBackwardOp,
            [x, gamma, beta, weight, bias, shift],
            |[x, gamma, beta, weight, bias, shift], tracked| {
                let inputs = [x, gamma, beta, weight, bias];
                let add = ConvAdd::Shift(shift);
                let (out, state) = forward_recorded::<B>(inputs, add, (norm, spec), tracked);
                (out, state.map(|s| (s, Added::Shift(rows))))
            },
        )
    }

    fn norm_conv2d_residual(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        norm: NormSpec,
        spec: ConvSpec,
    ) -> FloatTensor<Self> {
        record_op_saving::<B, C, _, 6>(
            NormConvPlusBackwardOp,
            [x, gamma, beta, weight, bias, residual],
            |[x, gamma, beta, weight, bias, residual], tracked| {
                let inputs = [x, gamma, beta, weight, bias];
                let add = ConvAdd::Residual(residual);
                let (out, state) = forward_recorded::<B>(inputs, add, (norm, spec), tracked);
                (out, state.map(|s| (s, Added::Residual)))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::direct;
    use super::*;

    fn dims(c_in: usize, (h, w): (usize, usize), k: usize, spec: ConvSpec) -> Dims {
        Dims {
            n: 2,
            c_in,
            h,
            w,
            c_out: 4,
            k,
            h_out: spec.output_side(h, k),
            w_out: spec.output_side(w, k),
            spec,
        }
    }

    /// The norm writes the planes of the 3x3 convolutions that keep the size, of images at
    /// least [`MIN_WIDTH`] wide, where the direct kernels run; every other convolution reads the
    /// norm's output formed first.
    #[test]
    fn the_norm_writes_the_planes_of_wide_3x3_convolutions_that_keep_the_size() {
        let direct = direct::available(Isa::detect());
        let same = ConvSpec {
            stride: 1,
            padding: 1,
        };
        let halving = ConvSpec {
            stride: 2,
            padding: 1,
        };
        let pointwise = ConvSpec {
            stride: 1,
            padding: 0,
        };
        for (c_in, side, k, spec, wanted) in [
            (8, (28, 28), 3, same, true),
            (6, (13, 12), 3, same, true),
            (4, (14, 17), 3, same, true),
            (4, (7, 7), 3, same, false),
            (4, (12, 11), 3, same, false),
            (0, (28, 28), 3, same, false),
            (6, (12, 12), 3, halving, false),
            (6, (12, 12), 1, pointwise, false),
        ] {
            let d = dims(c_in, side, k, spec);
            assert_eq!(fused(&d), wanted && direct, "{d:?}");
        }
    }
}
