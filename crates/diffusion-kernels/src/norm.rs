//! GroupNorm with its affine map and, optionally, SiLU after it, as one Burn backend extension
//! for flex with its backward pass for autodiff: one pass over each (image, group) forward, two
//! backward (the group's sums, then the input's gradient), where Burn's composition takes about
//! ten element-wise operations each way, each a pass and a tensor the graph keeps. The backward
//! pass recomputes the normalised values from the saved input and the group's mean and
//! reciprocal standard deviation.

use std::mem::MaybeUninit;

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
use crate::flex::{contiguous, record_op_saving, register_gradients};
use crate::math::Isa;
use crate::norm_math::{self, Group, GroupGrads, Moments, Padded};

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
    /// [`FusedGroupNorm::group_norm_fused`]'s output and what its backward pass keeps of the
    /// forward one: each group's moments (mean and reciprocal standard deviation).
    fn group_norm_saving(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: NormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of `x`, `gamma` and `beta` from the output's gradient and the moments
    /// [`GroupNormBackward::group_norm_saving`] returned.
    fn group_norm_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        moments: FloatTensor<Self>,
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
    (n, c, spatial, per_group(c, groups))
}

/// Channels per group of `c` channels in `groups` groups (which must divide them).
fn per_group(c: usize, groups: usize) -> usize {
    assert!(
        groups > 0 && c.is_multiple_of(groups),
        "{c} channels in {groups} groups"
    );
    c / groups
}

/// The first channel of group `i` of the batch (over every image's groups in turn).
fn first_channel(i: usize, groups: usize, per_group: usize) -> usize {
    (i % groups) * per_group
}

/// Group `i` of the batch (over every image's groups in turn): its [`Group`] of `values`, with
/// its channels' share of the affine map.
fn group_of<'a>(
    i: usize,
    spec: NormSpec,
    (spatial, per_group): (usize, usize),
    values: &'a [f32],
    (gamma, beta): (&'a [f32], &'a [f32]),
) -> Group<'a> {
    let first = first_channel(i, spec.groups, per_group);
    let channels = first..first + per_group;
    Group {
        values,
        gamma: &gamma[channels.clone()],
        beta: &beta[channels],
        spatial,
        epsilon: spec.epsilon,
        silu: spec.silu,
    }
}

/// Groups a task takes at most: a batch's groups in many small tasks, so that the thread
/// done first takes the other's last ones instead of waiting for them.
const GROUPS_PER_TASK: usize = 16;

/// The group norm of `x` and its groups' moments ([`Moments::VALUES`] values a group), each
/// group a task; the output is never zeroed first.
pub(crate) fn forward_flex(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    spec: NormSpec,
) -> (FlexTensor, FlexTensor) {
    let shape = x.shape();
    let (_, _, spatial, per_group) = sizes(x, spec.groups);
    let (xs, gs, bs) = (values(x), values(gamma), values(beta));
    let group_len = (per_group * spatial).max(1);
    let isa = Isa::detect();
    let mut out: Vec<f32> = Vec::with_capacity(xs.len());
    let mut moments = vec![Moments::default(); xs.len() / group_len];
    out.spare_capacity_mut()[..xs.len()]
        .par_chunks_mut(group_len)
        .zip(xs.par_chunks(group_len).zip(moments.par_iter_mut()))
        .with_max_len(GROUPS_PER_TASK)
        .enumerate()
        .for_each(|(i, (o, (v, saved)))| {
            let group = group_of(i, spec, (spatial, per_group), v, (gs, bs));
            norm_math::forward(isa, group, o, saved);
        });
    // SAFETY: `norm_math::forward` wrote every value of each group's chunk
    unsafe { out.set_len(xs.len()) };
    (
        FlexTensor::from_data(TensorData::new(out, shape)),
        moments_tensor(&moments),
    )
}

/// One image's group norm (`x`, `[c, spatial]` values, `spec.groups` groups) into its
/// channels' zero-bordered planes `planes` (`[c, plane]`, [`Padded`]), its groups' moments
/// into `moments` (one per group): every value of `planes` written.
pub(crate) fn image_forward_padded(
    isa: Isa,
    x: &[f32],
    (gamma, beta): (&[f32], &[f32]),
    spec: NormSpec,
    (padded, planes): (Padded, &mut [MaybeUninit<f32>]),
    moments: &mut [Moments],
) {
    let c = gamma.len();
    let per_group = per_group(c, spec.groups);
    let spatial = padded.h * padded.w;
    assert!(
        x.len() == c * spatial && planes.len() == c * padded.plane,
        "an image of {c} channels of {spatial} values, and a plane a channel"
    );
    assert_eq!(moments.len(), spec.groups, "one set of moments a group");
    let group_len = (per_group * spatial).max(1);
    let groups = x
        .chunks(group_len)
        .zip(planes.chunks_mut(per_group * padded.plane));
    for (i, ((v, p), saved)) in groups.zip(moments.iter_mut()).enumerate() {
        let group = group_of(i, spec, (spatial, per_group), v, (gamma, beta));
        norm_math::forward_padded(isa, group, padded, p, saved);
    }
}

/// Moments as the flat values the backward pass takes ([`Moments::VALUES`] a group).
pub(crate) fn moments_tensor(moments: &[Moments]) -> FlexTensor {
    let values: Vec<f32> = moments.iter().flat_map(|m| m.to_values()).collect();
    let len = values.len();
    FlexTensor::from_data(TensorData::new(values, [len]))
}

impl FusedGroupNorm for Flex {
    fn group_norm_fused(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        spec: NormSpec,
    ) -> FlexTensor {
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        forward_flex(&x, &gamma, &beta, spec).0
    }
}

impl GroupNormBackward for Flex {
    fn group_norm_saving(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        spec: NormSpec,
    ) -> (FlexTensor, FlexTensor) {
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        forward_flex(&x, &gamma, &beta, spec)
    }

    fn group_norm_backward(
        grad: FlexTensor,
        x: FlexTensor,
        moments: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        spec: NormSpec,
    ) -> [FlexTensor; 3] {
        let (mut grad, x, gamma, beta) = (
            contiguous(grad),
            contiguous(x),
            contiguous(gamma),
            contiguous(beta),
        );
        let moments = contiguous(moments);
        let (_, c, spatial, per_group) = sizes(&x, spec.groups);
        let (xs, gs, bs, ms) = (values(&x), values(&gamma), values(&beta), values(&moments));
        let group_len = (per_group * spatial).max(1);
        assert_eq!(
            ms.len(),
            xs.len() / group_len * Moments::VALUES,
            "one set of moments a group"
        );
        let isa = Isa::detect();
        // the input's gradient in the output's buffer (copy-on-write: in place unless shared)
        let dx = grad.storage_mut::<f32>();
        assert_eq!(dx.len(), xs.len(), "gradient and input differ in size");
        // per group: its channels' d gamma, then their d beta
        let mut affine = vec![0.0f32; xs.len() / group_len * 2 * per_group];
        dx.par_chunks_mut(group_len)
            .zip(xs.par_chunks(group_len))
            .zip(ms.par_chunks(Moments::VALUES))
            .zip(affine.par_chunks_mut((2 * per_group).max(1)))
            .with_max_len(GROUPS_PER_TASK)
            .enumerate()
            .for_each(|(i, (((dxg, v), m), a))| {
                let group = group_of(i, spec, (spatial, per_group), v, (gs, bs));
                let (dgamma, dbeta) = a.split_at_mut(per_group);
                let grads = GroupGrads {
                    dx: dxg,
                    dgamma,
                    dbeta,
                };
                norm_math::backward(isa, group, Moments::from_values(m), grads);
            });
        let (dgamma, dbeta) = gather_affine_grads(c, spec.groups, &affine);
        [
            grad,
            FlexTensor::from_data(TensorData::new(dgamma, [c])),
            FlexTensor::from_data(TensorData::new(dbeta, [c])),
        ]
    }
}

/// The `c` channels' d gamma and d beta, summed over the images in their order, from each
/// group's d gamma and d beta side by side in `affine` (the batch's groups in turn, `groups` an
/// image).
fn gather_affine_grads(c: usize, groups: usize, affine: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let per_group = c / groups;
    let mut dgamma = vec![0.0f32; c];
    let mut dbeta = vec![0.0f32; c];
    for (i, a) in affine.chunks_exact((2 * per_group).max(1)).enumerate() {
        let first = first_channel(i, groups, per_group);
        let (dg, db) = a.split_at(per_group);
        for j in 0..per_group {
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
    /// x, its groups' moments, gamma, beta, the spec.
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        NormSpec,
    );

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        // all three formed, each registered where its parent is tracked
        register_gradients::<B, _, 3>(ops, grads, |grad, (x, moments, gamma, beta, spec), _| {
            B::group_norm_backward(grad, x, moments, gamma, beta, spec).map(Some)
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
        record_op_saving::<B, C, _, 3>(
            GroupNormBackwardOp,
            [x, gamma, beta],
            |[x, gamma, beta], tracked| {
                if !tracked {
                    return (B::group_norm_fused(x, gamma, beta, spec), None);
                }
                let (out, moments) =
                    B::group_norm_saving(x.clone(), gamma.clone(), beta.clone(), spec);
                (out, Some((x, moments, gamma, beta, spec)))
            },
        )
    }
}
