//! The diagonal Gaussian KL per row as one operation ([`FusedGaussianKl`]): on flex one pass
//! forward and one backward ([`GaussianKlBackward`]), on autodiff with its backward pass.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata, backend_extension};
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::{PARALLEL_MIN, contiguous, record_op, register_gradients, rows_per_task};
use crate::math::{self, GaussianGrads, GaussianRows, Isa};

/// The diagonal Gaussian KL per row as one operation (see [`crate::kl_diag_gaussian`]), with
/// its backward on autodiff.
#[backend_extension(Autodiff, Flex)]
pub trait FusedGaussianKl: Backend {
    /// `[n]`: KL(N(mu_q, diag var_q) || N(mu_p, diag exp(logvar_p))) per row in nats; `mu_q`,
    /// `mu_p`, `logvar_p` `[n, d]`, `var_q` and `logvar_q` `[n, 1]` or `[n, d]`.
    fn gaussian_kl(
        mu_q: FloatTensor<Self>,
        var_q: FloatTensor<Self>,
        logvar_q: FloatTensor<Self>,
        mu_p: FloatTensor<Self>,
        logvar_p: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// [`FusedGaussianKl`]'s backward pass on the inner backend: the five inputs' gradients from
/// the rows' output gradient `grad` (`[n]`), each computed when `wanted`.
pub trait GaussianKlBackward: FusedGaussianKl {
    /// `[mu_q's, var_q's, logvar_q's, mu_p's, logvar_p's]`, each of its input's shape.
    fn gaussian_kl_backward(
        grad: FloatTensor<Self>,
        inputs: [FloatTensor<Self>; 5],
        wanted: [bool; 5],
    ) -> [Option<FloatTensor<Self>>; 5];
}

/// The five KL inputs as contiguous flex tensors, checked: f32, `[n, d]` and `[n, qd]` with
/// qd 1 or d.
fn gaussian_inputs(inputs: [FlexTensor; 5]) -> ([FlexTensor; 5], [usize; 3]) {
    let inputs = inputs.map(contiguous);
    for t in &inputs {
        assert_eq!(t.dtype(), DType::F32, "the fused Gaussian KL is f32 only");
    }
    let [n, d] = inputs[0].shape().dims::<2>();
    let qd = inputs[1].shape().dims::<2>()[1];
    assert!(qd == 1 || qd == d, "var_q must be [n, 1] or [n, d]");
    for (t, width) in inputs.iter().zip([d, qd, qd, d, d]) {
        assert_eq!(
            t.shape().dims::<2>(),
            [n, width],
            "the KL's inputs differ in shape"
        );
    }
    (inputs, [n, d, qd])
}

/// The kernels' view of the five checked inputs' values.
fn gaussian_rows(inputs: &[FlexTensor; 5], d: usize, qd: usize) -> GaussianRows<'_> {
    let v = |i: usize| inputs[i].as_slice::<f32>().expect("contiguous");
    GaussianRows {
        mu_q: v(0),
        var_q: v(1),
        logvar_q: v(2),
        mu_p: v(3),
        logvar_p: v(4),
        d,
        qd,
    }
}

impl FusedGaussianKl for Flex {
    fn gaussian_kl(
        mu_q: FlexTensor,
        var_q: FlexTensor,
        logvar_q: FlexTensor,
        mu_p: FlexTensor,
        logvar_p: FlexTensor,
    ) -> FlexTensor {
        let (inputs, [n, d, qd]) = gaussian_inputs([mu_q, var_q, logvar_q, mu_p, logvar_p]);
        let rows = gaussian_rows(&inputs, d, qd);
        let isa = Isa::detect();
        let mut out = vec![0.0f32; n];
        if n * d < PARALLEL_MIN {
            math::gaussian_kl_kernel(isa, rows, &mut out);
        } else {
            let per = rows_per_task(d);
            out.par_chunks_mut(per)
                .enumerate()
                .for_each(|(i, o)| math::gaussian_kl_kernel(isa, rows.rows(i * per, o.len()), o));
        }
        FlexTensor::from_data(TensorData::new(out, [n]))
    }
}

impl GaussianKlBackward for Flex {
    fn gaussian_kl_backward(
        grad: FlexTensor,
        inputs: [FlexTensor; 5],
        wanted: [bool; 5],
    ) -> [Option<FlexTensor>; 5] {
        let (inputs, [n, d, qd]) = gaussian_inputs(inputs);
        let grad = contiguous(grad);
        let g = grad.as_slice::<f32>().expect("contiguous");
        assert_eq!(g.len(), n, "one gradient per row");
        let rows = gaussian_rows(&inputs, d, qd);
        let widths = [d, qd, qd, d, d];
        let mut bufs: [Option<Vec<f32>>; 5] =
            // zeroed: the posterior variances' gradients are sums over the row
            std::array::from_fn(|i| wanted[i].then(|| vec![0.0f32; n * widths[i]]));
        let isa = Isa::detect();
        let per = if n * d < PARALLEL_MIN {
            n.max(1)
        } else {
            rows_per_task(d)
        };
        // each buffer cut into the same blocks of rows, one task a block
        let mut blocks: [Vec<Option<&mut [f32]>>; 5] = Default::default();
        for ((b, buf), w) in blocks.iter_mut().zip(bufs.iter_mut()).zip(widths) {
            *b = match buf {
                Some(v) => v.chunks_mut(per * w).map(Some).collect(),
                None => (0..n.div_ceil(per)).map(|_| None).collect(),
            };
        }
        let [b0, b1, b2, b3, b4] = blocks;
        let tasks: Vec<_> = b0
            .into_iter()
            .zip(b1)
            .zip(b2)
            .zip(b3)
            .zip(b4)
            .enumerate()
            .collect();
        let run = |(i, ((((mu_q, var_q), logvar_q), mu_p), logvar_p)): (usize, _)| {
            let r0 = i * per;
            let len = per.min(n - r0);
            let out = GaussianGrads {
                mu_q,
                var_q,
                logvar_q,
                mu_p,
                logvar_p,
            };
            math::gaussian_kl_grad_kernel(isa, rows.rows(r0, len), &g[r0..r0 + len], out);
        };
        if tasks.len() > 1 {
            tasks.into_par_iter().for_each(run);
        } else {
            tasks.into_iter().for_each(run);
        }
        let shapes = inputs.each_ref().map(|t| t.shape());
        let mut i = 0;
        bufs.map(|b| {
            let shape = shapes[i].clone();
            i += 1;
            b.map(|v| FlexTensor::from_data(TensorData::new(v, shape)))
        })
    }
}

/// The Gaussian KL's backward pass: parents mu_q, var_q, logvar_q, mu_p, logvar_p.
#[derive(Debug)]
struct GaussianKlBackwardOp;

impl<B: Backend + GaussianKlBackward> Backward<B, 5> for GaussianKlBackwardOp {
    type State = [FloatTensor<B>; 5];

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_gradients::<B, _, 5>(ops, grads, B::gaussian_kl_backward);
    }
}

impl<B: Backend + GaussianKlBackward, C: CheckpointStrategy> FusedGaussianKl for Autodiff<B, C> {
    fn gaussian_kl(
        mu_q: FloatTensor<Self>,
        var_q: FloatTensor<Self>,
        logvar_q: FloatTensor<Self>,
        mu_p: FloatTensor<Self>,
        logvar_p: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        record_op::<B, C, _, 5>(
            GaussianKlBackwardOp,
            [mu_q, var_q, logvar_q, mu_p, logvar_p],
            |inner| inner.clone(),
            |[a, b, c, d, e]| B::gaussian_kl(a, b, c, d, e),
        )
    }
}
