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

/// 1 / (1 + e^-z).
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
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

/// The mean and 1 / sqrt(var + eps) of a group's values (two passes, in f64).
fn moments(v: &[f32], epsilon: f64) -> (f32, f32) {
    let len = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / len;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / len;
    (mean as f32, (1.0 / (var + epsilon).sqrt()) as f32)
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
        let mut out = vec![0.0f32; xs.len()];
        out.par_chunks_mut(group_len)
            .zip(xs.par_chunks(group_len))
            .enumerate()
            .for_each(|(i, (o, v))| {
                let (mean, rstd) = moments(v, spec.epsilon);
                let first = (i % spec.groups) * per_group;
                for (j, (oc, vc)) in o.chunks_mut(spatial).zip(v.chunks(spatial)).enumerate() {
                    let (g, b) = (
                        gs[first + j] * rstd,
                        bs[first + j] - mean * rstd * gs[first + j],
                    );
                    if spec.silu {
                        for (y, &x) in oc.iter_mut().zip(vc) {
                            let z = x * g + b;
                            *y = z * sigmoid(z);
                        }
                    } else {
                        for (y, &x) in oc.iter_mut().zip(vc) {
                            *y = x * g + b;
                        }
                    }
                }
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
        let mut dx = vec![0.0f32; xs.len()];
        // per group: its channels' d gamma and d beta
        let partial: Vec<(usize, Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(group_len)
            .zip(xs.par_chunks(group_len).zip(dys.par_chunks(group_len)))
            .enumerate()
            .map(|(i, (dxg, (v, dy)))| {
                let first = (i % spec.groups) * per_group;
                let channels = first..first + per_group;
                let affine = (&gs[channels.clone()], &bs[channels]);
                let (dgamma, dbeta) = group_backward(spec, affine, spatial, dxg, v, dy);
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

/// One group's backward pass: its input gradient into `dxg` (from its values `v` and output
/// gradient `dy`), and its channels' d gamma and d beta; `affine` is the channels' (gamma, beta).
fn group_backward(
    spec: NormSpec,
    (gs, bs): (&[f32], &[f32]),
    spatial: usize,
    dxg: &mut [f32],
    v: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let per_group = gs.len();
    let (mean, rstd) = moments(v, spec.epsilon);
    let mut dgamma = vec![0.0f32; per_group];
    let mut dbeta = vec![0.0f32; per_group];
    // dz (the affine map's output gradient) into dx for now; the group's sums of
    // dxhat and dxhat xhat
    let (mut sum, mut sum_xhat) = (0.0f64, 0.0f64);
    for j in 0..per_group {
        let (g, b) = (gs[j], bs[j]);
        let range = j * spatial..(j + 1) * spatial;
        let (mut dg, mut db) = (0.0f64, 0.0f64);
        for ((d, &x), &gy) in dxg[range.clone()]
            .iter_mut()
            .zip(&v[range.clone()])
            .zip(&dy[range])
        {
            let xhat = (x - mean) * rstd;
            let dz = if spec.silu {
                let z = xhat * g + b;
                let s = sigmoid(z);
                gy * s * (1.0 + z * (1.0 - s))
            } else {
                gy
            };
            dg += (dz * xhat) as f64;
            db += dz as f64;
            let dxhat = dz * g;
            sum += dxhat as f64;
            sum_xhat += (dxhat * xhat) as f64;
            *d = dxhat;
        }
        dgamma[j] = dg as f32;
        dbeta[j] = db as f32;
    }
    let len = dxg.len() as f64;
    let (m1, m2) = ((sum / len) as f32, (sum_xhat / len) as f32);
    for (d, &x) in dxg.iter_mut().zip(v) {
        let xhat = (x - mean) * rstd;
        *d = rstd * (*d - m1 - xhat * m2);
    }
    (dgamma, dbeta)
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
