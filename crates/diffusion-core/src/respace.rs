//! Shorter chains (SPEC section 6): respacing (Nichol and Dhariwal 2021, section 4) and DDIM
//! (Song, Meng and Ermon 2021, eq. 12), in f64.
//!
//! - [`Respacing`]: steps s_1 < … < s_K = T of a trained chain with abar'_k = abar_{s_k} and
//!   b'_k = 1 − abar_{s_k} / abar_{s_{k−1}} (abar_{s_0} = 1), a proper diffusion of K steps
//!   whose network is still called at the original step s_k.
//! - [`Ddim`]: the DDIM step, with diffusers' `DDIMScheduler` options and their meanings
//!   (`timestep_spacing`, `clip_sample`, `clip_sample_range`, `set_alpha_to_one`,
//!   `prediction_type`), on diffusers' 0-based timesteps: timestep i is this crate's step
//!   t = i + 1, and `alphas_cumprod[i]` is abar_{i+1}.

use serde::{Deserialize, Serialize};

use crate::ScheduleError;

/// Kept steps of a chain of T steps: 1-based, increasing, ending at T.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Respacing {
    kept: Vec<usize>,
    steps: usize,
}

impl Respacing {
    /// `k` steps spread evenly over 1..=T, both ends included (k = T keeps every step).
    pub fn even(steps: usize, k: usize) -> Result<Self, ScheduleError> {
        if k < 1 || k > steps {
            return Err(ScheduleError::InvalidParameter(format!(
                "a respaced chain needs 1 <= steps <= T = {steps}, got {k}"
            )));
        }
        let kept = if k == 1 {
            vec![steps]
        } else {
            (0..k)
                .map(|i| 1 + ((i * (steps - 1)) as f64 / (k - 1) as f64).round() as usize)
                .collect()
        };
        Self::new(steps, kept)
    }

    /// Given kept steps (1-based, strictly increasing, the last one T).
    pub fn new(steps: usize, kept: Vec<usize>) -> Result<Self, ScheduleError> {
        let increasing = kept.windows(2).all(|w| w[0] < w[1]);
        if kept.is_empty() || !increasing || kept[0] < 1 || *kept.last().unwrap() != steps {
            return Err(ScheduleError::InvalidParameter(format!(
                "kept steps must increase from >= 1 to T = {steps}: {kept:?}"
            )));
        }
        Ok(Self { kept, steps })
    }

    /// The kept steps s_1 < … < s_K = T.
    pub fn kept(&self) -> &[usize] {
        &self.kept
    }

    /// T of the original chain.
    pub fn original_steps(&self) -> usize {
        self.steps
    }

    /// Whether every step is kept.
    pub fn is_identity(&self) -> bool {
        self.kept.len() == self.steps
    }

    /// The betas of the shorter chain, b'_k = 1 − abar_{s_k} / abar_{s_{k−1}}, from the
    /// original chain's `alpha_bar` (t ↦ abar_t, abar_0 = 1).
    pub fn betas(&self, alpha_bar: impl Fn(usize) -> f64) -> Vec<f64> {
        let mut prev = 1.0;
        self.kept
            .iter()
            .map(|&s| {
                let a = alpha_bar(s);
                let b = 1.0 - a / prev;
                prev = a;
                b
            })
            .collect()
    }
}

/// How DDIM picks its timesteps (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimestepSpacing {
    /// `(0..K) * (T / K)`, reversed (integer ratio): diffusers' default.
    #[default]
    Leading,
    /// `round(T, T − T/K, …)` − 1 (float ratio): ends at T − 1.
    Trailing,
    /// `round(linspace(0, T − 1, K))`, reversed.
    Linspace,
}

/// What the model predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PredictionType {
    /// The noise ε of x_t = sqrt(abar_t) x_0 + sqrt(1 − abar_t) ε.
    #[default]
    Epsilon,
    /// x_0 itself.
    Sample,
}

/// A DDIM sampler over a trained chain's `alphas_cumprod` (abar_1 … abar_T).
#[derive(Debug, Clone, PartialEq)]
pub struct Ddim {
    /// abar_{i+1} at 0-based timestep i.
    pub alphas_cumprod: Vec<f64>,
    /// Inference steps K.
    pub steps: usize,
    /// 0 is deterministic, 1 has DDPM's posterior variance.
    pub eta: f64,
    /// How the timesteps are spread.
    pub timestep_spacing: TimestepSpacing,
    /// Clip the predicted x_0 to [−`clip_sample_range`, `clip_sample_range`].
    pub clip_sample: bool,
    /// The clipping range.
    pub clip_sample_range: f64,
    /// The last step goes to abar = 1 (else to abar_1).
    pub set_alpha_to_one: bool,
    /// What the model's output is.
    pub prediction_type: PredictionType,
}

impl Ddim {
    /// The 0-based timesteps visited, from the noisiest down.
    pub fn timesteps(&self) -> Vec<usize> {
        let (t, k) = (self.alphas_cumprod.len(), self.steps.max(1));
        match self.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = t / k;
                (0..k).rev().map(|i| i * ratio).collect()
            }
            // diffusers' round(arange(T, 0, -T / K)) - 1, NumPy's values T + i d with its step
            // d = (T - T / K) - T; always K of them, where NumPy's length, rounded up from a
            // float quotient, gives one more (ending at -1) for some K (62 of 1..=1000 at T = 1000)
            TimestepSpacing::Trailing => {
                let ratio = t as f64 / k as f64;
                let d = (t as f64 - ratio) - t as f64;
                (0..k)
                    .map(|i| {
                        ((t as f64 + i as f64 * d).round_ties_even() as i64 - 1).max(0) as usize
                    })
                    .collect()
            }
            TimestepSpacing::Linspace => (0..k)
                .rev()
                .map(|i| {
                    if k == 1 {
                        0
                    } else {
                        (i as f64 * (t - 1) as f64 / (k - 1) as f64).round_ties_even() as usize
                    }
                })
                .collect(),
        }
    }

    /// The timestep after `timestep` (diffusers: `timestep − T / K`; negative is the end).
    pub fn previous(&self, timestep: usize) -> Option<usize> {
        let ratio = self.alphas_cumprod.len() / self.steps.max(1);
        timestep.checked_sub(ratio)
    }

    /// abar of the timestep after `timestep` (1 or abar_1 past the end).
    pub fn alpha_prev(&self, timestep: usize) -> f64 {
        match self.previous(timestep) {
            Some(p) => self.alphas_cumprod[p],
            None if self.set_alpha_to_one => 1.0,
            None => self.alphas_cumprod[0],
        }
    }

    /// The coefficients of one step from `timestep`: x_prev = a x̂_0 + b ε̂ + σ z, as
    /// (predicted-x_0 weight a, noise weight b, σ), and abar_t.
    pub fn coefficients(&self, timestep: usize) -> (f64, f64, f64, f64) {
        let abar = self.alphas_cumprod[timestep];
        let prev = self.alpha_prev(timestep);
        let variance = (1.0 - prev) / (1.0 - abar) * (1.0 - abar / prev);
        let sigma = self.eta * variance.max(0.0).sqrt();
        (
            prev.sqrt(),
            (1.0 - prev - sigma * sigma).max(0.0).sqrt(),
            sigma,
            abar,
        )
    }

    /// One DDIM step on host values: `x` at `timestep`, the model's `output` there, `noise`
    /// (standard normal, used when eta > 0). Returns (x_prev, predicted x_0).
    pub fn step(
        &self,
        x: &[f64],
        timestep: usize,
        output: &[f64],
        noise: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let (a, b, sigma, abar) = self.coefficients(timestep);
        let mut x0 = Vec::with_capacity(x.len());
        let out = x
            .iter()
            .zip(output)
            .enumerate()
            .map(|(i, (&x, &o))| {
                let (mut p0, eps) = match self.prediction_type {
                    PredictionType::Epsilon => ((x - (1.0 - abar).sqrt() * o) / abar.sqrt(), o),
                    PredictionType::Sample => (o, (x - abar.sqrt() * o) / (1.0 - abar).sqrt()),
                };
                // as diffusers: only x̂_0 is clipped, ε̂ stays what it was
                if self.clip_sample {
                    p0 = p0.clamp(-self.clip_sample_range, self.clip_sample_range);
                }
                x0.push(p0);
                let mut v = a * p0 + b * eps;
                if self.eta > 0.0 {
                    v += sigma * noise[i];
                }
                v
            })
            .collect();
        (out, x0)
    }

    /// The whole chain on host values from `x` (x_T), with `model(x, timestep)` the model's
    /// output and `noise(k)` the standard normals of step k (eta > 0).
    pub fn sample(
        &self,
        mut x: Vec<f64>,
        mut model: impl FnMut(&[f64], usize) -> Vec<f64>,
        mut noise: impl FnMut(usize) -> Vec<f64>,
    ) -> Vec<f64> {
        for (k, t) in self.timesteps().into_iter().enumerate() {
            let out = model(&x, t);
            let z = if self.eta > 0.0 { noise(k) } else { Vec::new() };
            x = self.step(&x, t, &out, &z).0;
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BetaSchedule, GaussianDiffusion};

    #[test]
    fn respaced_betas_reproduce_abar_on_the_kept_steps() {
        let g = GaussianDiffusion::new(BetaSchedule::cosine().betas(1000).unwrap(), 2).unwrap();
        for k in [1, 2, 10, 50, 999, 1000] {
            let r = Respacing::even(1000, k).unwrap();
            assert_eq!(r.kept().len(), k);
            assert_eq!(*r.kept().last().unwrap(), 1000);
            let betas = r.betas(|t| g.alpha_bar(t));
            let mut abar = 1.0;
            for (&s, b) in r.kept().iter().zip(&betas) {
                abar *= 1.0 - b;
                // to rounding: a relative 1e-12 over up to 1,000 products, or 1e-16 where
                // abar is near 0 and 1 - b' cancels
                let (got, want) = (abar, g.alpha_bar(s));
                assert!(
                    (got / want - 1.0).abs() < 1e-12 || (got - want).abs() < 1e-16,
                    "k = {k}, s = {s}: {got} vs {want}"
                );
            }
            // the respaced betas make a valid diffusion
            assert!(GaussianDiffusion::new(betas, 2).is_ok() || k == 1);
        }
        let all = Respacing::even(40, 40).unwrap();
        assert!(all.is_identity());
        assert_eq!(all.kept(), (1..=40).collect::<Vec<_>>());
        assert_eq!(Respacing::even(10, 4).unwrap().kept(), [1, 4, 7, 10]);
        assert!(Respacing::even(10, 11).is_err());
        assert!(Respacing::new(10, vec![3, 2, 10]).is_err());
        assert!(Respacing::new(10, vec![1, 5]).is_err());
    }

    /// Trailing timesteps are NumPy's round(arange(T, 0, -T / K)) - 1, K of them for every K
    /// (values from NumPy 2: K = 3 and 61 at T = 1000, where NumPy's float length adds a 62nd
    /// step at -1; K = 7 at T = 40).
    #[test]
    fn trailing_timesteps_are_numpys_and_k_of_them() {
        let ddim = |t: usize, k: usize| Ddim {
            alphas_cumprod: vec![0.5; t],
            steps: k,
            eta: 0.0,
            timestep_spacing: TimestepSpacing::Trailing,
            clip_sample: false,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            prediction_type: PredictionType::Epsilon,
        };
        assert_eq!(ddim(1000, 3).timesteps(), [999, 666, 332]);
        let t61 = ddim(1000, 61).timesteps();
        assert_eq!(t61[..3], [999, 983, 966]);
        assert_eq!(t61[58..], [48, 32, 15]);
        assert_eq!(ddim(40, 7).timesteps(), [39, 33, 28, 22, 16, 10, 5]);
        for k in 1..=1000 {
            let ts = ddim(1000, k).timesteps();
            assert_eq!(ts.len(), k, "K = {k}");
            assert!(ts.windows(2).all(|w| w[0] > w[1]), "K = {k}: {ts:?}");
        }
    }
}
