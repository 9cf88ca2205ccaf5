//! Importance sampling of the step t for the Monte-Carlo bound (Nichol and Dhariwal 2021,
//! section 3.3): the sum over the bound's steps t = first..T (first = 2, or 1 with a decoder) of
//! the terms L_t is estimated from one draw per example as L_t / p(t). Uniform p(t) is unbiased
//! but noisy when a few steps carry most of the bound; p(t) proportional to sqrt(E[L_t^2]) minimises the estimate's variance. The second
//! moments are tracked as each step's running mean of L_t^2 (an exponential average once every
//! step has been seen [`WARMUP`] times; uniform draws until then), and p(t) is mixed with a
//! little of the uniform distribution so that no step's weight 1 / p(t) explodes.

use diffusion_data::Rng;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// Draws of every step before the sampler leaves the uniform distribution.
pub const WARMUP: u32 = 10;
/// The exponential average's decay per draw of a step.
pub const DECAY: f64 = 0.99;
/// The share of the uniform distribution mixed into p(t).
pub const UNIFORM_SHARE: f64 = 0.001;

/// The running second moments of the terms of steps t = first..T (first = 2, or 1 where the
/// bound has a decoder term at t = 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSampler {
    /// The running mean of L_t^2 (nats^2), index t - first.
    second_moment: Vec<f64>,
    /// Draws of each step so far (saturating at [`WARMUP`]).
    count: Vec<u32>,
    /// The first step.
    #[serde(default = "edge_first")]
    first: usize,
}

fn edge_first() -> usize {
    2
}

impl StepSampler {
    /// A sampler for T steps (t = 2..T), starting uniform.
    pub fn new(steps: usize) -> Self {
        Self::starting_at(2, steps)
    }

    /// A sampler for the steps t = first..T, starting uniform.
    pub fn starting_at(first: usize, steps: usize) -> Self {
        let n = (steps + 1).saturating_sub(first);
        Self {
            second_moment: vec![0.0; n],
            count: vec![0; n],
            first,
        }
    }

    /// The first step it draws (2, or 1 where the bound has a decoder term at t = 1).
    pub fn first(&self) -> usize {
        self.first
    }

    /// Trajectory length T (the last step it draws).
    pub fn steps(&self) -> usize {
        self.count.len() + self.first - 1
    }

    /// p(t) for t = first..T (index t - first), or `None` while still warming up (uniform).
    pub fn probabilities(&self) -> Option<Vec<f64>> {
        if self.count.iter().any(|&c| c < WARMUP) {
            return None;
        }
        let rms: Vec<f64> = self.second_moment.iter().map(|m| m.sqrt()).collect();
        let total: f64 = rms.iter().sum();
        let k = rms.len() as f64;
        if !(total.is_finite() && total > 0.0) {
            return None;
        }
        Some(
            rms.iter()
                .map(|r| (1.0 - UNIFORM_SHARE) * r / total + UNIFORM_SHARE / k)
                .collect(),
        )
    }

    /// Draws `n` steps and each one's weight 1 / (K p(t)) for the K steps (1 while uniform).
    pub fn draw(&self, n: usize, rng: &mut Rng) -> (Vec<usize>, Option<Vec<f32>>) {
        let (first, steps) = (self.first, self.steps());
        let Some(p) = self.probabilities() else {
            return (
                (0..n).map(|_| rng.random_range(first..=steps)).collect(),
                None,
            );
        };
        let mut cumulative = Vec::with_capacity(p.len());
        let mut acc = 0.0;
        for &v in &p {
            acc += v;
            cumulative.push(acc);
        }
        let k = p.len() as f64;
        let mut ts = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(n);
        for _ in 0..n {
            let u = rng.random::<f64>() * acc;
            let i = cumulative.partition_point(|&c| c <= u).min(p.len() - 1);
            ts.push(i + first);
            weights.push((1.0 / (k * p[i])) as f32);
        }
        (ts, Some(weights))
    }

    /// Records the KL terms (nats) of a batch's rows at their steps.
    pub fn update(&mut self, ts: &[usize], kl: &[f32]) {
        for (&t, &l) in ts.iter().zip(kl) {
            let i = t - self.first;
            let sq = (l as f64) * (l as f64);
            if !sq.is_finite() {
                continue;
            }
            let c = self.count[i];
            self.second_moment[i] = if c < WARMUP {
                (self.second_moment[i] * c as f64 + sq) / (c + 1) as f64
            } else {
                DECAY * self.second_moment[i] + (1.0 - DECAY) * sq
            };
            self.count[i] = (c + 1).min(WARMUP);
        }
    }

    /// A sampler of the steps first.. whose second moments are given (index t - first),
    /// already warmed up.
    pub fn from_second_moments(first: usize, second_moment: Vec<f64>) -> Self {
        let count = vec![WARMUP; second_moment.len()];
        Self {
            second_moment,
            count,
            first,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sampler_from_step_one_draws_every_step_and_weighs_them() {
        let uniform = StepSampler::starting_at(1, 3);
        assert_eq!(uniform.steps(), 3);
        let mut rng = diffusion_data::rng(1, 0);
        let (ts, w) = uniform.draw(3000, &mut rng);
        assert!(w.is_none());
        for t in 1..=3 {
            let share = ts.iter().filter(|&&s| s == t).count() as f64 / 3000.0;
            assert!((share - 1.0 / 3.0).abs() < 0.04, "t = {t}: {share}");
        }
        let mut s = StepSampler::starting_at(1, 3);
        for _ in 0..WARMUP {
            s.update(&[1, 2, 3], &[3.0, 1.0, 1.0]);
        }
        let p = s.probabilities().unwrap();
        assert!((p[0] - (0.999 * 0.6 + 0.001 / 3.0)).abs() < 1e-12, "{p:?}");
        let (ts, w) = s.draw(20, &mut rng);
        for (t, w) in ts.iter().zip(w.unwrap()) {
            assert!((w as f64 - 1.0 / (3.0 * p[t - 1])).abs() < 1e-5);
        }
    }

    use super::*;

    #[test]
    fn uniform_until_every_step_is_seen_then_proportional_to_the_rms() {
        let mut s = StepSampler::new(4); // t = 2, 3, 4
        let mut rng = diffusion_data::rng(1, 0);
        assert!(s.probabilities().is_none());
        let (ts, w) = s.draw(1000, &mut rng);
        assert!(w.is_none());
        assert!(ts.iter().all(|t| (2..=4).contains(t)));
        for _ in 0..WARMUP {
            s.update(&[2, 3, 4], &[1.0, 2.0, 4.0]);
        }
        let p = s.probabilities().unwrap();
        let expect = [1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0];
        for (got, e) in p.iter().zip(expect) {
            let mixed = (1.0 - UNIFORM_SHARE) * e + UNIFORM_SHARE / 3.0;
            assert!((got - mixed).abs() < 1e-12, "{got} vs {mixed}");
        }
        // draws follow p and the weights are 1 / ((T - 1) p(t))
        let (ts, w) = s.draw(70_000, &mut rng);
        let w = w.unwrap();
        for (i, &pi) in p.iter().enumerate() {
            let share = ts.iter().filter(|&&t| t == i + 2).count() as f64 / 70_000.0;
            // binomial s.e. at most 0.0019
            assert!((share - pi).abs() < 0.008, "t = {}: {share} vs {pi}", i + 2);
        }
        for (&t, &wt) in ts.iter().zip(&w) {
            assert!((wt as f64 - 1.0 / (3.0 * p[t - 2])).abs() < 1e-5);
        }
    }

    /// The weighted estimate is unbiased: the mean of (T - 1) w L_t over the sampler's draws is
    /// the full sum, and its spread is far below that of uniform draws.
    #[test]
    fn weighted_draws_estimate_the_full_sum_with_less_variance() {
        let terms = [0.1f64, 5.0, 0.3, 12.0, 0.02];
        let k = terms.len() as f64;
        let full: f64 = terms.iter().sum();
        // second moments of noisy terms: E[L^2] = L^2 (1 + 0.25)
        let s = StepSampler::from_second_moments(2, terms.iter().map(|l| 1.25 * l * l).collect());
        let mut rng = diffusion_data::rng(2, 0);
        let n = 200_000;
        let (ts, w) = s.draw(n, &mut rng);
        let w = w.unwrap();
        let estimates: Vec<f64> = ts
            .iter()
            .zip(&w)
            .map(|(&t, &w)| k * w as f64 * terms[t - 2])
            .collect();
        let mean = estimates.iter().sum::<f64>() / n as f64;
        let var = estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            (mean - full).abs() < 4.0 * (var / n as f64).sqrt() + 1e-9,
            "{mean} vs {full}"
        );
        let uniform = StepSampler::new(terms.len() + 1);
        let (ts, _) = uniform.draw(n, &mut rng);
        let u: Vec<f64> = ts.iter().map(|&t| k * terms[t - 2]).collect();
        let u_mean = u.iter().sum::<f64>() / n as f64;
        let u_var = u.iter().map(|e| (e - u_mean).powi(2)).sum::<f64>() / n as f64;
        assert!((u_mean - full).abs() < 4.0 * (u_var / n as f64).sqrt());
        assert!(var < 0.01 * u_var, "importance {var} vs uniform {u_var}");
    }
}
