//! GroupNorm with its affine map and, optionally, SiLU after it, as one Burn backend extension
//! for flex with its backward pass for autodiff: one pass over each (image, group) forward, two
//! backward (the group's sums, then the input's gradient), where Burn's composition takes about
//! ten element-wise operations each way, each a pass and a tensor the graph keeps. The backward
//! pass recomputes the normalised values from the saved input and the group's mean and
//! reciprocal standard deviation.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata, backend_extension};
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::NormSpec;
use crate::flex::{contiguous, record_op, register_gradients};
use crate::math::Isa;
use crate::norm_math::{self, Group, GroupGrads};

/// The fused group norm. Any backend can implement it; this crate does for [`Flex`] and, with a
/// backward pass, for [`Autodiff`] over any backend that does.
#[backend_extension(Autodiff, Flex)]
pub trait FusedGroupNorm: Backend {
    /// `x` `[n, c, ...]`, `gamma` and `beta` `[c]`: `(x - mean) / sqrt(var + eps) gamma + beta`
    /// over each image's groups of `c / groups` channels, then SiLU when `spec.silu`.
    fn group_norm_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: NormSpec,
    ) -> FloatTensor<Self>;
}

/// [`FusedGroupNorm`]'s backward pass on the inner backend.
pub trait GroupNormBackward: FusedGroupNorm {
    /// The gradients of `x`, `gamma` and `beta` from the output's gradient.
    fn group_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: NormSpec,
    ) -> [FloatTensor<Self>; 3];
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// Sizes: images, channels, values per channel, channels per group.
fn sizes(x: &FlexTensor, groups: usize) -> (usize, usize, usize, usize) {
    let shape = x.shape();
    let (n, c) = (shape[0], shape[1]);
    let spatial = shape.num_elements() / (n * c).max(1);
    assert!(
        groups > 0 && c % groups == 0,
        "{c} channels in {groups} groups"
    );
    (n, c, spatial, c / groups)
}

/// Group `i` of the batch (over every image's groups in turn): its first channel and its
/// [`Group`] of `values`, with its channels' share of the affine map.
fn group_of<'a>(
    i: usize,
    spec: NormSpec,
    (spatial, per_group): (usize, usize),
    values: &'a [f32],
    (gamma, beta): (&'a [f32], &'a [f32]),
) -> (usize, Group<'a>) {
    let first = (i % spec.groups) * per_group;
    let channels = first..first + per_group;
    let group = Group {
        values,
        gamma: &gamma[channels.clone()],
        beta: &beta[channels],
        spatial,
        epsilon: spec.epsilon,
        silu: spec.silu,
    };
    (first, group)
}

impl FusedGroupNorm for Flex {
    fn group_norm_fused(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        spec: NormSpec,
    ) -> FlexTensor {
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        let shape = x.shape();
        let (_, _, spatial, per_group) = sizes(&x, spec.groups);
        let (xs, gs, bs) = (values(&x), values(&gamma), values(&beta));
        let group_len = per_group * spatial;
        let isa = Isa::detect();
        let mut out = vec![0.0f32; xs.len()];
        out.par_chunks_mut(group_len)
            .zip(xs.par_chunks(group_len))
            .enumerate()
            .for_each(|(i, (o, v))| {
                let (_, group) = group_of(i, spec, (spatial, per_group), v, (gs, bs));
                norm_math::forward(isa, group, o);
            });
        FlexTensor::from_data(TensorData::new(out, shape))
    }
}

impl GroupNormBackward for Flex {
    fn group_norm_backward(
        grad: FlexTensor,
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        spec: NormSpec,
    ) -> [FlexTensor; 3] {
        let (grad, x, gamma, beta) = (
            contiguous(grad),
            contiguous(x),
            contiguous(gamma),
            contiguous(beta),
        );
        let shape = x.shape();
        let (_, c, spatial, per_group) = sizes(&x, spec.groups);
        let (dys, xs, gs, bs) = (values(&grad), values(&x), values(&gamma), values(&beta));
        let group_len = per_group * spatial;
        let isa = Isa::detect();
        let mut dx = vec![0.0f32; xs.len()];
        // per group: its channels' d gamma and d beta
        let partial: Vec<(usize, Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(group_len)
            .zip(xs.par_chunks(group_len).zip(dys.par_chunks(group_len)))
            .enumerate()
            .map(|(i, (dxg, (v, dy)))| {
                let (first, group) = group_of(i, spec, (spatial, per_group), v, (gs, bs));
                let mut dgamma = vec![0.0f32; per_group];
                let mut dbeta = vec![0.0f32; per_group];
                let grads = GroupGrads {
                    dx: dxg,
                    dgamma: &mut dgamma,
                    dbeta: &mut dbeta,
                };
                norm_math::backward(isa, group, dy, grads);
                (first, dgamma, dbeta)
            })
            .collect();
        let (dgamma, dbeta) = gather_affine_grads(c, partial);
        [
            FlexTensor::from_data(TensorData::new(dx, shape)),
            FlexTensor::from_data(TensorData::new(dgamma, [c])),
            FlexTensor::from_data(TensorData::new(dbeta, [c])),
        ]
    }
}

/// The `c` channels' d gamma and d beta from each group's (first channel, d gamma, d beta).
fn gather_affine_grads(
    c: usize,
    partial: Vec<(usize, Vec<f32>, Vec<f32>)>,
) -> (Vec<f32>, Vec<f32>) {
    let mut dgamma = vec![0.0f32; c];
    let mut dbeta = vec![0.0f32; c];
    for (first, dg, db) in partial {
        for j in 0..dg.len() {
            dgamma[first + j] += dg[j];
            dbeta[first + j] += db[j];
        }
    }
    (dgamma, dbeta)
}

/// The group norm's backward pass: parents x, gamma, beta.
#[derive(Debug)]
struct GroupNormBackwardOp;

impl<B: Backend + GroupNormBackward> Backward<B, 3> for GroupNormBackwardOp {
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, NormSpec);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        // all three formed, each registered where its parent is tracked
        register_gradients::<B, _, 3>(ops, grads, |grad, (x, gamma, beta, spec), _| {
            B::group_norm_backward(grad, x, gamma, beta, spec).map(Some)
        });
    }
}

impl<B: Backend + GroupNormBackward, C: CheckpointStrategy> FusedGroupNorm for Autodiff<B, C> {
    fn group_norm_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: NormSpec,
    ) -> FloatTensor<Self> {
        record_op::<B, C, _, 3>(
            GroupNormBackwardOp,
            [x, gamma, beta],
            |[x, gamma, beta]| (x.clone(), gamma.clone(), beta.clone(), spec),
            |[x, gamma, beta]| B::group_norm_fused(x, gamma, beta, spec),
        )
    }
}
