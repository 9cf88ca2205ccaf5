//! The matrix product on flex ([`FusedLinear::product`](super::FusedLinear::product)): by
//! shape, in the fused layer's element-wise pass (an inner dimension of a few), as partial sums
//! over a long inner dimension (a few rows or columns), or by `gemm` straight into the output.

use burn::backend::TensorMetadata;
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::linear::forward;
use super::{PARALLEL_MIN, contiguous, gemm_into, rows_per_task, sum_partials};
use crate::Activation;
use crate::math::{self, Isa, SMALL_K};

/// Below this many multiply-adds a product runs on one thread (flex's own threshold).
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// Flex's [`FusedLinear::product`](super::FusedLinear::product): `a b` as its shape runs
/// fastest (in f32), else flex's own product.
pub(super) fn product_flex(a: FlexTensor, b: FlexTensor) -> FlexTensor {
    if a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        let [m, k] = a.shape().dims::<2>();
        let n = b.shape().dims::<2>()[1];
        let few = |d: usize| (1..=SMALL_K).contains(&d);
        let long = k >= PARALLEL_MIN / 128;
        if few(k) {
            // the product in the element-wise pass (as the fused layer's first layer)
            let zeros = FlexTensor::from_data(TensorData::new(vec![0.0f32; n], [n]));
            return forward(&a, &b, zeros.clone(), zeros, None, Activation::Identity);
        }
        if few(m) && long {
            return few_rows_product(&a, &b);
        }
        if few(n) && long {
            // (bᵀ aᵀ)ᵀ, as a view
            let t = few_rows_product(&b.transpose(0, 1), &a.transpose(0, 1));
            return t.transpose(0, 1);
        }
        gemm_product(&a, &b)
    } else {
        Flex::float_matmul(a, b)
    }
}

/// `a b` for 2-D f32 flex tensors of any strides, by `gemm` straight into a fresh vector (flex's
/// own product allocates its output as bytes and copies it into an aligned buffer).
fn gemm_product(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let [m, k] = a.shape().dims::<2>();
    let [kb, n] = b.shape().dims::<2>();
    assert_eq!(k, kb, "product: inner dimensions differ");
    if k == 0 || m * n == 0 {
        return FlexTensor::from_data(TensorData::new(vec![0.0f32; m * n], [m, n]));
    }
    // gemm writes every element of the output (`read_dst` false): no need to zero it first
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let (la, lb) = (a.layout(), b.layout());
    let (sa, sb) = (la.strides(), lb.strides());
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_PRODUCT {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let (pa, pb) = (
        a.storage::<f32>()[la.start_offset()..].as_ptr(),
        b.storage::<f32>()[lb.start_offset()..].as_ptr(),
    );
    // SAFETY: the pointers address element (0, 0) of each operand, and every (i, j)
    // reached through the strides lies in its storage (flex's layout invariant); `out` has
    // room for m x n, row-major; without accumulating and with k > 0 gemm writes every
    // element without reading any, so the length can then be set.
    unsafe {
        gemm_into(
            [m, n, k],
            out.as_mut_ptr(),
            n as isize,
            (pa, sa[1], sa[0]),
            (pb, sb[1], sb[0]),
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

/// `a b` for `a` of a few rows (`[m, k]`, any strides) and a long `k`, such as the first
/// layer's weight gradient `xᵀ g`: each task sums its own range of k into an `[m, n]` partial,
/// the partials are then added (gemm packs for this shape and runs it on one thread).
fn few_rows_product(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let [m, k] = a.shape().dims::<2>();
    let n = b.shape().dims::<2>()[1];
    let b = contiguous(b.clone());
    let bs = b.as_slice::<f32>().expect("contiguous");
    let (la, store) = (a.layout(), a.storage::<f32>());
    let (sa, off) = (la.strides(), la.start_offset() as isize);
    let isa = Isa::detect();
    let per = rows_per_task(n).max(k.div_ceil(2 * rayon::current_num_threads().max(1)));
    let partial = |r0: usize, br: &[f32]| {
        let len = br.len() / n;
        // a's columns r0..r0 + len as rows [len, m]
        let at: Vec<f32> = (r0..r0 + len)
            .flat_map(|r| {
                (0..m).map(move |i| store[(off + i as isize * sa[0] + r as isize * sa[1]) as usize])
            })
            .collect();
        let mut out = vec![0.0f32; m * n];
        math::accumulate_kernel(isa, &at, br, &mut out, m);
        out
    };
    let partials = bs
        .par_chunks(per * n)
        .enumerate()
        .map(|(i, br)| partial(i * per, br));
    let out = sum_partials(partials, m * n);
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}
