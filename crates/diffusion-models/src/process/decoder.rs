//! The discretised decoder's bins in the space a Gaussian process diffuses, and what a batch
//! whose rows include step 1 uploads for it ([`crate::process::GaussianBound::decoder`]).

use burn::tensor::{Bool, Tensor};
use diffusion_core::decoder::OPEN_END;

/// The bins of integer data in the space the process diffuses, one set per coordinate: level k
/// is the value `lowest + 2 k half`, its bin reaches `half` either side, and the bins of the
/// lowest and highest levels are open below and above ([`diffusion_core::decoder`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoder {
    /// The lowest level (0 for 8-bit data), standardised.
    pub lowest: Vec<f32>,
    /// The highest level (255), standardised.
    pub highest: Vec<f32>,
    /// Half a bin, standardised.
    pub half: Vec<f32>,
}

impl Decoder {
    /// The ends of the bins of `x0` (row-major, `d` columns): (lower, upper), the open ends
    /// [`OPEN_END`] times the levels' span beyond the lowest and highest levels.
    pub fn bins(&self, x0: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let d = self.half.len();
        let (mut lower, mut upper) = (Vec::with_capacity(x0.len()), Vec::with_capacity(x0.len()));
        for (j, &x) in x0.iter().enumerate() {
            let i = j % d;
            let (h, lo, hi) = (self.half[i], self.lowest[i], self.highest[i]);
            let open = OPEN_END * (hi - lo).max(1.0);
            lower.push(if x < lo + h { lo - open } else { x - h });
            upper.push(if x > hi - h { hi + open } else { x + h });
        }
        (lower, upper)
    }
}

/// What the decoder needs of a batch whose rows include step 1: which rows, and their bins.
#[derive(Debug, Clone)]
pub struct DecoderRows {
    /// The rows at the chain's step 1, `[n]`.
    pub(super) first: Tensor<1, Bool>,
    /// The lower ends of the rows' bins, `[n, d]`.
    pub(super) lower: Tensor<2>,
    /// The upper ends.
    pub(super) upper: Tensor<2>,
}
