//! Respaced chains (Nichol and Dhariwal 2021, section 4) as processes of their own: a trained
//! network's chain on kept steps s_1 < … < s_K = T, a proper diffusion with abar'_k = abar_{s_k}
//! and b'_k = 1 − abar_{s_k} / abar_{s_{k−1}}, the network called at the original step s_k. Being
//! a [`Process`](super::Process), a respaced chain has everything a process has: its bound
//! (the shorter chain's own K), samples, conditioning, snapshots.
//!
//! **How the network's kernel maps onto the shorter chain.** For Gaussian runs the original
//! kernel for s_k → s_k − 1 implies an x_0 by inverting the posterior mean, x̂_0 = (μ − c_t x) /
//! c_0, and its log-variance sits at a fraction v of the way from ln b~_t to ln b_t; the
//! respaced kernel is the shorter chain's posterior mean at x̂_0 with the log-variance at the
//! same fraction of its own range, an affine map of the original kernel ([`affine_map`]). For
//! the noise-predicting parametrizations that is the parametrization itself applied with the
//! shorter chain's own coefficients; runs with a decoder form their kernels that way
//! ([`Respaced::mapped_from`] `None`), the others map the original kernel (the two agree to
//! rounding: a test). For binomial runs the kernel's probability of a 1 is a mixture f = p̂ q(1 |
//! x_t, x_0 = 1) + (1 − p̂) q(1 | x_t, x_0 = 0), so the implied p̂ (clamped to [0, 1]) mixes the
//! shorter chain's posteriors instead ([`BinomialTables`]). A kept step whose predecessor is
//! kept too is the original step, unchanged: keeping every step is the ancestral sampler, draw
//! for draw.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use diffusion_core::{BinomialDiffusion, GaussianDiffusion, Respacing, ScheduleError};

use super::tensor2;
use super::{BinomialBound, GaussianBound};

/// A shorter chain of a trained network: the steps the network is called at and, where the
/// chain maps the original chain's kernel onto its own, that chain (`D`: the forward process,
/// Gaussian or binomial).
#[derive(Debug, Clone)]
pub struct Respaced<D> {
    /// The network's step s_k for each of this chain's steps k = 1..=K (`network_steps[k - 1]`).
    pub network_steps: Vec<usize>,
    /// The chain the network was trained on, when this chain's kernels are its kernels at s_k
    /// mapped onto this one; `None`: formed with this chain's own coefficients (Gaussian
    /// noise-predicting parametrizations with a decoder).
    pub mapped_from: Option<D>,
}

impl<D> Respaced<D> {
    /// Whether step k (1..=K) maps s_k → s_{k−1} with the original kernel at s_k unchanged:
    /// s_{k−1} = s_k − 1 (s_0 = 0).
    pub fn keeps_original_kernel(&self, k: usize) -> bool {
        let previous = if k >= 2 { self.network_steps[k - 2] } else { 0 };
        k >= 1 && previous + 1 == self.network_steps[k - 1]
    }
}

fn already_respaced() -> ScheduleError {
    ScheduleError::InvalidParameter("the chain is respaced already; respace the original".into())
}

/// The betas of the chain on `r`'s kept steps of a chain with `alpha_bar` and first beta `b1`:
/// b'_k = 1 − abar_{s_k} / abar_{s_{k−1}}, the first taken as b_1 itself when s_1 = 1 (as the
/// original chain's edge step).
fn kept_betas(r: &Respacing, alpha_bar: impl Fn(usize) -> f64, b1: f64) -> Vec<f64> {
    let mut betas = r.betas(alpha_bar);
    if r.kept()[0] == 1 {
        betas[0] = b1;
    }
    betas
}

impl GaussianBound {
    /// The chain on the kept steps of `r` as a process of its own, for a network trained on
    /// this one (see the module's documentation).
    pub fn respaced(&self, r: &Respacing) -> Result<Self, ScheduleError> {
        if self.respaced.is_some() {
            return Err(already_respaced());
        }
        let g = &self.diffusion;
        let own = self.parametrization.predicts_noise() && self.decoder.is_some();
        if self.decoder.is_some() && !own && r.kept()[0] != 1 {
            // the decoder is the original kernel at t = 1, which maps onto no longer last step
            return Err(ScheduleError::InvalidParameter(
                "a respaced chain whose last step is the decoder keeps step 1 (or predicts the noise)".into(),
            ));
        }
        let betas = if own {
            r.betas(|t| g.alpha_bar(t))
        } else {
            kept_betas(r, |t| g.alpha_bar(t), g.beta(1))
        };
        Ok(Self {
            diffusion: GaussianDiffusion::new(betas, g.dim())?,
            parametrization: self.parametrization,
            clip: self.clip.clone(),
            decoder: self.decoder.clone(),
            respaced: Some(Respaced {
                network_steps: r.kept().to_vec(),
                mapped_from: (!own).then(|| g.clone()),
            }),
        })
    }
}

impl Respaced<GaussianDiffusion> {
    /// The map of each step k = 0..=K of the shorter chain `short` (entry 0 unused; `None`
    /// where the kernel is the original one); `None` for a chain with its own coefficients.
    pub(crate) fn maps(&self, short: &GaussianDiffusion) -> Option<Vec<Option<[f64; 4]>>> {
        let original = self.mapped_from.as_ref()?;
        let map = |k: usize| {
            (k >= 2 && !self.keeps_original_kernel(k))
                .then(|| affine_map(original, short, self.network_steps[k - 1], k))
        };
        Some((0..=short.steps()).map(map).collect())
    }
}

/// The map from the original chain's kernel at step `t` to the shorter chain's at step `k`:
/// with x̂_0 = (μ − c_t x) / c_0 and the log-variance at the fraction v = (ln σ² − ln b~_t) /
/// (ln b_t − ln b~_t), the shorter chain's mean c'_0 x̂_0 + c'_t x and log-variance
/// ln b~'_k + v (ln b'_k − ln b~'_k) are μ' = A μ + B x and ln σ'² = C ln σ² + D; returns
/// [A, B, C, D] (the identity [1, 0, 1, 0] where the two steps are the same).
pub fn affine_map(
    original: &GaussianDiffusion,
    short: &GaussianDiffusion,
    t: usize,
    k: usize,
) -> [f64; 4] {
    let (c0, ct, post_var) = original.posterior_coefficients(t);
    let (lo, hi) = (post_var.ln(), original.beta(t).ln());
    let (c0s, cts, post_var_s) = short.posterior_coefficients(k);
    let (los, his) = (post_var_s.ln(), short.beta(k).ln());
    let c = (his - los) / (hi - lo);
    [c0s / c0, cts - c0s * ct / c0, c, los - lo * c]
}

impl BinomialBound {
    /// The chain on the kept steps of `r` as a process of its own, for a network trained on
    /// this one (see the module's documentation).
    pub fn respaced(&self, r: &Respacing) -> Result<Self, ScheduleError> {
        if self.respaced.is_some() {
            return Err(already_respaced());
        }
        let b = &self.diffusion;
        let betas = kept_betas(r, |t| b.alpha_bar(t), b.beta(1));
        Ok(Self {
            diffusion: BinomialDiffusion::new(betas, b.pi(), b.dim())?,
            parametrization: self.parametrization,
            respaced: Some(Respaced {
                network_steps: r.kept().to_vec(),
                mapped_from: Some(b.clone()),
            }),
        })
    }

    /// The chain and step whose kernel the network's output forms at this chain's step `k`:
    /// the original chain at s_k for a respaced chain, else this one at k.
    pub(crate) fn kernel_step(&self, k: usize) -> (&BinomialDiffusion, usize) {
        match &self.respaced {
            Some(Respaced {
                network_steps,
                mapped_from: Some(original),
            }) => (original, network_steps[k - 1]),
            _ => (&self.diffusion, k),
        }
    }
}

/// A respaced binomial chain's per-step values on a device, one row per step k: the original
/// chain's posteriors q(1 | x_t, x_0) at s_k and the shorter chain's at k, for x_0 = 1, 0 and
/// x_t = 0, 1 (8 columns), which map the network's kernel onto the shorter chain where
/// s_{k−1} < s_k − 1.
#[derive(Debug, Clone)]
pub struct BinomialTables {
    table: Tensor<2>,
    /// Whether step k's kernel is mapped (index k).
    mapped: Vec<bool>,
}

impl BinomialTables {
    /// The tables of a respaced `bound` (`None` for the chain a network was trained on).
    pub fn new(bound: &BinomialBound, device: &Device) -> Option<Self> {
        let respaced = bound.respaced.as_ref()?;
        let steps = bound.diffusion.steps();
        let mut values = Vec::with_capacity((steps + 1) * 8);
        for k in 0..=steps {
            let k = k.max(1);
            let (original, t) = bound.kernel_step(k);
            for (chain, step) in [(original, t), (&bound.diffusion, k)] {
                for x0 in [1.0, 0.0] {
                    for xt in [0.0, 1.0] {
                        values.push(chain.posterior_one(step, x0, xt) as f32);
                    }
                }
            }
        }
        Some(Self {
            table: tensor2(values, steps + 1, 8, device),
            mapped: (0..=steps)
                .map(|k| k >= 2 && !respaced.keeps_original_kernel(k))
                .collect(),
        })
    }

    /// The kernel's `logits` at the bits `x` of step `k`, mapped onto the shorter chain where
    /// the step is mapped.
    pub(crate) fn map_step(&self, logits: Tensor<2>, x: &Tensor<2>, k: usize) -> Tensor<2> {
        if !self.mapped[k] {
            return logits;
        }
        mixed_logits(logits, x, &self.table.clone().narrow(0, k, 1))
    }

    /// [`BinomialTables::map_step`] for rows of steps `ks`.
    pub(crate) fn map_rows(&self, logits: Tensor<2>, x: &Tensor<2>, ks: &[usize]) -> Tensor<2> {
        if !ks.iter().any(|&k| self.mapped[k]) {
            return logits;
        }
        let device = logits.device();
        let [n, d] = logits.dims();
        let rows = self
            .table
            .clone()
            .select(0, super::steps_tensor(ks, &device));
        let mask: Vec<bool> = ks
            .iter()
            .flat_map(|&k| std::iter::repeat_n(self.mapped[k], d))
            .collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [n, d]), &device);
        let mixed = mixed_logits(logits.clone(), x, &rows);
        logits.mask_where(mask, mixed)
    }
}

/// The kernel's probability f = sigmoid(`logits`) of a 1 at bits `x` as the mixture
/// p̂ q(1 | x_t, x_0 = 1) + (1 − p̂) q(1 | x_t, x_0 = 0) of the original posteriors, p̂ re-mixing
/// the shorter chain's: logits of the shorter chain's kernel. `rows` holds
/// [`BinomialTables`]' columns, `[n, 8]` or `[1, 8]`.
fn mixed_logits(logits: Tensor<2>, x: &Tensor<2>, rows: &Tensor<2>) -> Tensor<2> {
    let n = rows.dims()[0];
    let col = |i: usize| rows.clone().slice([0..n, i..i + 1]);
    // a per-bit value chosen by x in {0, 1}: column `i + 1` where x = 1, column `i` where x = 0
    let by_bit = |i: usize| x.clone() * col(i + 1) + (x.clone().neg() + 1.0) * col(i);
    let f = diffusion_kernels::activate(logits, diffusion_kernels::Activation::Sigmoid);
    let (q1, q0) = (by_bit(0), by_bit(2));
    let p_hat = ((f - q0.clone()) / (q1 - q0)).clamp(0.0, 1.0);
    let p = p_hat.clone() * by_bit(4) + (p_hat.neg() + 1.0) * by_bit(6);
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    (p.clone() / (p.neg() + 1.0)).log()
}
