//! The factor r_t of one step: drawn up on the host for a chunk of chains
//! ([`Conditioning::gaussian_step`], [`Conditioning::binary_step`]), then multiplied into the
//! reverse kernel on a device ([`DeviceFactor`]), Gaussian or Bernoulli, with the log-weights of
//! the particle systems.

use burn::tensor::{Device, Tensor};
use diffusion_core::condition::bit_log_ratio;
use diffusion_data::Rng;
use rand::Rng as _;
use rand_distr::StandardNormal;

use super::{Cell, ConditionMode, Conditioning};
use crate::tensors::tensor2;

impl Conditioning {
    /// The factor r_k for `m` chains at step `k` of a Gaussian chain whose abar_k is `abar`
    /// (drawing the forward-process noise in [`ConditionMode::Forward`]).
    pub(crate) fn gaussian_step(&self, m: usize, abar: f64, rng: &mut Rng) -> StepFactor {
        let mut f = StepFactor::empty(m * self.dim, 1.0);
        let (a, b) = (abar.sqrt(), (1.0 - abar).max(0.0).sqrt());
        for j in 0..m * self.dim {
            // (value, variance) of the factor on this coordinate; variance 0 is a known value
            let (y, s2) = match self.cell(j / self.dim, j % self.dim) {
                Cell::Free => continue,
                Cell::Known(v) => (v as f64, 0.0),
                Cell::Observed(y, s) => (y as f64, s * s),
            };
            let (value, var) = match self.mode {
                ConditionMode::Constant => (y, s2),
                ConditionMode::Forward => {
                    let e: f64 = rng.sample(StandardNormal);
                    (a * y + b * e, abar * s2)
                }
                // N(y; a x, 1 - abar + s²) as a factor in x: N(x; y / a, (1 - abar + s²) / abar)
                // (the twisted mode's proposals are the likelihood mode's)
                ConditionMode::Likelihood | ConditionMode::Twisted => {
                    (y / a, ((1.0 - abar) + s2) / abar)
                }
            };
            // (tested in f32, as stored: a variance that underflows there is a known value)
            if var as f32 > 0.0 {
                f.set_soft(j, value as f32, var as f32);
            } else {
                f.set_known(j, value as f32);
            }
        }
        f
    }

    /// The factor r_k for `m` chains at step `k` of a binomial chain with abar_k = `abar` and
    /// stationary rate `pi`: the soft part as log-likelihood ratios.
    pub(crate) fn binary_step(&self, m: usize, abar: f64, pi: f64, rng: &mut Rng) -> StepFactor {
        let mut f = StepFactor::empty(m * self.dim, 0.0);
        for j in 0..m * self.dim {
            // (bit, flip probability) of the factor on this coordinate; 0 is a known bit
            let (y, e) = match self.cell(j / self.dim, j % self.dim) {
                Cell::Free => continue,
                Cell::Known(v) => (v >= 0.5, 0.0),
                Cell::Observed(y, e) => (y >= 0.5, e),
            };
            match self.mode {
                ConditionMode::Constant => f.set_bit(j, y, e),
                ConditionMode::Forward => {
                    // y_t ~ q(y_t | y_0 = y): kept with probability abar, else redrawn
                    let y = if rng.random::<f64>() >= abar {
                        rng.random::<f64>() < pi
                    } else {
                        y
                    };
                    f.set_bit(j, y, abar * e)
                }
                // (the twisted mode, refused for bits, would propose as the likelihood mode)
                ConditionMode::Likelihood | ConditionMode::Twisted if abar >= 1.0 => {
                    f.set_bit(j, y, e)
                }
                ConditionMode::Likelihood | ConditionMode::Twisted => {
                    // P(x_0 = 1 | x_t) for i.i.d. Bernoulli(pi) bits, then P(y | x_t)
                    let p1 = abar + pi * (1.0 - abar);
                    let p0 = pi * (1.0 - abar);
                    let r1 = if y { 1.0 - e } else { e };
                    let h = |p: f64| p * r1 + (1.0 - p) * (1.0 - r1);
                    f.set_soft(j, 0.0, (h(p1) / h(p0)).ln() as f32);
                }
            }
        }
        f
    }
}

/// One step's factor on the host, per (chain, coordinate): a known value, or a soft factor
/// (Gaussian: mean and variance; binary: the log-likelihood ratio), or none.
#[derive(Debug, Clone)]
pub(crate) struct StepFactor {
    /// 1 where the value is known.
    known: Vec<f32>,
    /// The known value, 0 elsewhere.
    known_value: Vec<f32>,
    /// 1 where a soft factor applies.
    soft: Vec<f32>,
    /// The soft factor's mean (Gaussian), 0 elsewhere.
    soft_value: Vec<f32>,
    /// The soft factor's variance (Gaussian; 1 elsewhere, so that var + s² is never 0) or
    /// log-likelihood ratio (binary; 0 elsewhere).
    soft_param: Vec<f32>,
}

impl StepFactor {
    /// No factor anywhere; `fill` is the soft parameter where none applies.
    fn empty(len: usize, fill: f32) -> Self {
        Self {
            known: vec![0.0; len],
            known_value: vec![0.0; len],
            soft: vec![0.0; len],
            soft_value: vec![0.0; len],
            soft_param: vec![fill; len],
        }
    }

    fn set_known(&mut self, j: usize, v: f32) {
        self.known[j] = 1.0;
        self.known_value[j] = v;
    }

    /// A bit `y` seen with flip probability `e` (0: known).
    fn set_bit(&mut self, j: usize, y: bool, e: f64) {
        let v = if y { 1.0 } else { 0.0 };
        if e > 0.0 {
            self.set_soft(j, v, bit_log_ratio(y, e) as f32);
        } else {
            self.set_known(j, v);
        }
    }

    fn set_soft(&mut self, j: usize, y: f32, param: f32) {
        self.soft[j] = 1.0;
        self.soft_value[j] = y;
        self.soft_param[j] = param;
    }

    /// The Gaussian product N(mean, var) r and a draw from it with standard normals `eps`
    /// (host, row-major, as long as the factor): the reference the device version is tested
    /// against.
    #[cfg(test)]
    pub(crate) fn gaussian_draw_host(&self, mean: &[f64], var: &[f64], eps: &[f64]) -> Vec<f32> {
        (0..self.known.len())
            .map(|j| {
                if self.known[j] == 1.0 {
                    return self.known_value[j];
                }
                let (m, v) = if self.soft[j] == 1.0 {
                    diffusion_core::condition::gaussian_product(
                        mean[j],
                        var[j],
                        self.soft_value[j] as f64,
                        self.soft_param[j] as f64,
                    )
                } else {
                    (mean[j], var[j])
                };
                (m + v.sqrt() * eps[j]) as f32
            })
            .collect()
    }

    /// A draw of bits whose kernel probabilities of a 1 are `p` (host), multiplied by the
    /// factor, with uniforms `u`.
    pub(crate) fn binary_draw_host(&self, p: &[f64], u: &[f64]) -> Vec<f32> {
        (0..self.known.len())
            .map(|j| {
                if self.known[j] == 1.0 {
                    return self.known_value[j];
                }
                let l = (p[j] / (1.0 - p[j])).ln() + self.soft_param[j] as f64;
                let q = 1.0 / (1.0 + (-l).exp());
                if u[j] < q { 1.0 } else { 0.0 }
            })
            .collect()
    }

    /// The factor on `device` as `[m, d]` tensors.
    pub(crate) fn upload(self, m: usize, d: usize, device: &Device) -> DeviceFactor {
        DeviceFactor {
            keep: tensor2(self.known.iter().map(|k| 1.0 - k).collect(), m, d, device),
            known_value: tensor2(self.known_value, m, d, device),
            soft: tensor2(self.soft, m, d, device),
            soft_value: tensor2(self.soft_value, m, d, device),
            soft_param: tensor2(self.soft_param, m, d, device),
        }
    }
}

/// A step's factor on a device (see [`StepFactor`]).
#[derive(Debug, Clone)]
pub(crate) struct DeviceFactor {
    /// 1 where the chain's own draw is kept (not known).
    keep: Tensor<2>,
    known_value: Tensor<2>,
    soft: Tensor<2>,
    soft_value: Tensor<2>,
    /// Gaussian: the factor's variance where soft (1 elsewhere); binary: the log-likelihood
    /// ratio (0 elsewhere).
    soft_param: Tensor<2>,
}

impl DeviceFactor {
    /// A draw of N(mean, var) r with standard normals `eps`: per coordinate
    /// mean' = mean (1 - w) + y w, var' = var (1 - w), w = var / (var + s²) where a soft factor
    /// applies, then the known values put in.
    pub(crate) fn gaussian_draw(
        &self,
        mean: Tensor<2>,
        var: Tensor<2>,
        eps: Tensor<2>,
    ) -> Tensor<2> {
        // where no factor applies soft = 0 (so w = 0) and soft_param = 1 (no division by 0)
        let w = self.soft.clone() * var.clone() / (var.clone() + self.soft_param.clone());
        let one_minus_w = w.clone().neg() + 1.0;
        let mean = mean * one_minus_w.clone() + self.soft_value.clone() * w;
        let x = mean + (var * one_minus_w).sqrt() * eps;
        self.put_known(x)
    }

    /// ln Z_t(x_t) − ln r_t(x_t) per chain for a Gaussian kernel N(mean, var) at x_t, where this
    /// factor is r_{t-1} and `prev` is r_t (the one x_t was drawn with; see
    /// [`Conditioning::resampled`]): N(v; mean, var) for a known value (held at v, r = 1 there),
    /// N(y; mean, var + s²) for a soft factor, over N(y_t; x_t, s_t²) of `prev`'s soft factor
    /// (none without `prev`: ln Z_t alone).
    pub(crate) fn gaussian_log_weight(
        &self,
        mean: &Tensor<2>,
        var: &Tensor<2>,
        x_t: &Tensor<2>,
        prev: Option<&DeviceFactor>,
    ) -> Tensor<1> {
        let log_normal = |x: Tensor<2>, m: Tensor<2>, v: Tensor<2>| {
            ((x - m).powi_scalar(2) / v.clone() + (v * (2.0 * std::f64::consts::PI)).log()) * -0.5
        };
        let known = self.keep.clone().neg() + 1.0;
        let known_term = log_normal(self.known_value.clone(), mean.clone(), var.clone()) * known;
        let z_term = log_normal(
            self.soft_value.clone(),
            mean.clone(),
            var.clone() + self.soft_param.clone(),
        ) * self.soft.clone();
        let Some(prev) = prev else {
            return (known_term + z_term).sum_dim(1).squeeze_dim(1);
        };
        let h_term = log_normal(
            prev.soft_value.clone(),
            x_t.clone(),
            prev.soft_param.clone(),
        ) * prev.soft.clone();
        (known_term + z_term - h_term).sum_dim(1).squeeze_dim(1)
    }

    /// ln Z_t(x_t) − ln r_t(x_t) per chain for a Bernoulli kernel with `logits` at x_t (this
    /// factor r_{t-1}, `prev` r_t): f or 1 − f for a known bit, f r(1) + (1 − f) r(0) for a soft
    /// one, over `prev`'s r(x_t); each soft r normalised, L its log-ratio: ln Z = softplus(l + L)
    /// − softplus(l) − softplus(L) and ln r(x) = −softplus(∓L) (none without `prev`).
    pub(crate) fn binary_log_weight(
        &self,
        logits: &Tensor<2>,
        x_t: &Tensor<2>,
        prev: Option<&DeviceFactor>,
    ) -> Tensor<1> {
        use burn::tensor::activation::softplus;
        let sp = |x: Tensor<2>| softplus(x, 1.0);
        let known = self.keep.clone().neg() + 1.0;
        let v = self.known_value.clone();
        let known_term =
            (v.clone() * sp(logits.clone().neg()) + (v.neg() + 1.0) * sp(logits.clone())).neg()
                * known;
        let l = self.soft_param.clone();
        let z_term =
            (sp(logits.clone() + l.clone()) - sp(logits.clone()) - sp(l)) * self.soft.clone();
        let Some(prev) = prev else {
            return (known_term + z_term).sum_dim(1).squeeze_dim(1);
        };
        let lp = prev.soft_param.clone();
        let h_term = (x_t.clone() * sp(lp.clone().neg()) + (x_t.clone().neg() + 1.0) * sp(lp))
            .neg()
            * prev.soft.clone();
        (known_term + z_term - h_term).sum_dim(1).squeeze_dim(1)
    }

    /// The logits of the kernel times the binary factor.
    pub(crate) fn binary_logits(&self, logits: Tensor<2>) -> Tensor<2> {
        logits + self.soft_param.clone()
    }

    /// `x` with the known values put in.
    pub(crate) fn put_known(&self, x: Tensor<2>) -> Tensor<2> {
        x * self.keep.clone() + self.known_value.clone()
    }
}
