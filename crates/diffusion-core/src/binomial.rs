//! Binomial diffusion on binary data (paper section 2 and table App.1, SPEC section 2): each bit
//! is kept with probability 1 - b_t or redrawn from Bernoulli(pi).
//!
//! Probabilities here are of a bit being 1.

#[cfg(feature = "burn")]
use burn::tensor::Tensor;

use crate::schedule::ScheduleError;

/// A binomial forward process
/// `q(x_t = 1 | x_{t-1}) = x_{t-1} (1 - b_t) + pi b_t` on `dim` bits, with abar precomputed in
/// `f64`. Steps are 1-based. Unlike the Gaussian case, b_T = 1 is allowed (then x_T is exactly
/// Bernoulli(pi)), as in the paper's default schedule b_t = 1/(T - t + 1).
#[derive(Debug, Clone)]
pub struct BinomialDiffusion {
    dim: usize,
    pi: f64,
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

/// Binary entropy h(p) in bits (0 at p = 0 or 1).
pub fn binary_entropy_bits(p: f64) -> f64 {
    let term = |q: f64| if q <= 0.0 { 0.0 } else { -q * q.log2() };
    term(p) + term(1.0 - p)
}

/// KL(Bernoulli(q) || Bernoulli(p)) in nats, scalar.
pub fn kl_bernoulli_scalar(q: f64, p: f64) -> f64 {
    let term = |a: f64, b: f64| if a <= 0.0 { 0.0 } else { a * (a / b).ln() };
    term(q, p) + term(1.0 - q, 1.0 - p)
}

/// KL(Bernoulli(q) || Bernoulli(sigmoid(logit_p))) per row in nats, summed over the `d` bits.
///
/// `q` and the constant `q_entropy_nats` (the sum over bits of -q ln q - (1-q) ln(1-q), `[n, 1]`)
/// come from the posterior; `logit_p` is the network's `[n, d]`. Written with log-sigmoids so it
/// stays finite for saturated logits: KL = -H(q) - sum[q log s(l) + (1-q) log s(-l)].
#[cfg(feature = "burn")]
pub fn kl_bernoulli_logits(
    q: Tensor<2>,
    q_entropy_nats: Tensor<1>,
    logit_p: Tensor<2>,
) -> Tensor<1> {
    use burn::tensor::activation::log_sigmoid;
    let log_p1 = log_sigmoid(logit_p.clone());
    let log_p0 = log_sigmoid(logit_p.neg());
    kl_bernoulli_log_probs(q, q_entropy_nats, log_p1, log_p0)
}

/// [`kl_bernoulli_logits`] from the log-probabilities `log_p1` = ln p and `log_p0` = ln(1 - p)
/// (`[n, d]` each), for a caller with its own log-sigmoid: -H(q) - sum[q log_p1 + (1-q) log_p0].
#[cfg(feature = "burn")]
pub fn kl_bernoulli_log_probs(
    q: Tensor<2>,
    q_entropy_nats: Tensor<1>,
    log_p1: Tensor<2>,
    log_p0: Tensor<2>,
) -> Tensor<1> {
    let cross = q.clone() * log_p1 + (q.neg() + 1.0) * log_p0;
    cross.sum_dim(1).squeeze_dim::<1>(1).neg() - q_entropy_nats
}

impl BinomialDiffusion {
    /// Builds the process from `b_1..b_T` (each in (0, 1]) and the stationary bit rate `pi`.
    pub fn new(betas: Vec<f64>, pi: f64, dim: usize) -> Result<Self, ScheduleError> {
        if betas.len() < 2 {
            return Err(ScheduleError::TooShort(betas.len()));
        }
        if !(pi > 0.0 && pi < 1.0) {
            return Err(ScheduleError::InvalidParameter(format!(
                "pi = {pi} must lie in (0, 1)"
            )));
        }
        if dim == 0 {
            return Err(ScheduleError::InvalidParameter(
                "data dimension must be at least 1".into(),
            ));
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut abar = 1.0;
        for (i, &b) in betas.iter().enumerate() {
            if !(b > 0.0 && b <= 1.0) {
                return Err(ScheduleError::BetaOutOfRange { t: i + 1, value: b });
            }
            abar *= 1.0 - b;
            alphas_cumprod.push(abar);
        }
        Ok(Self {
            dim,
            pi,
            betas,
            alphas_cumprod,
        })
    }

    /// Trajectory length T.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// Number of bits d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The stationary bit rate.
    pub fn pi(&self) -> f64 {
        self.pi
    }

    /// b_t.
    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t - 1]
    }

    /// abar_t, with abar_0 = 1.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            self.alphas_cumprod[t - 1]
        }
    }

    /// q(x_t = 1 | x_{t-1}) for one bit.
    pub fn forward_kernel(&self, t: usize, x_prev: f64) -> f64 {
        let b = self.beta(t);
        x_prev * (1.0 - b) + self.pi * b
    }

    /// q(x_t = 1 | x_0) = x_0 abar_t + pi (1 - abar_t).
    pub fn q_one(&self, t: usize, x0: f64) -> f64 {
        let a = self.alpha_bar(t);
        x0 * a + self.pi * (1.0 - a)
    }

    /// q(x_{t-1} = 1 | x_t, x_0) for one bit, t >= 1.
    pub fn posterior_one(&self, t: usize, x0: f64, xt: f64) -> f64 {
        let b = self.beta(t);
        let pi = self.pi;
        let p1 = self.q_one(t - 1, x0);
        // likelihoods of x_t given x_{t-1} = 1 and x_{t-1} = 0
        let (l1, l0) = if xt >= 0.5 {
            (1.0 - b + pi * b, pi * b)
        } else {
            (b * (1.0 - pi), 1.0 - pi * b)
        };
        let num = p1 * l1;
        num / (num + (1.0 - p1) * l0)
    }

    /// The per-sequence constants of K in bits: H_q(X_T|X_0) - H_q(X_1|X_0) - H_p(X_T) for one
    /// sequence `x0` (these depend on the data for binary diffusion).
    ///
    /// Exact for any data (SPEC section 6): besides eq. 14's entropies, the prior and the fixed
    /// edge step add (b_1 + abar_T) logit(pi) sum_i (x0_i − pi) nats, which vanish when every
    /// sequence has activity pi (as heartbeat sequences do) but not for other data.
    pub fn bound_constant_bits(&self, x0: &[f32]) -> f64 {
        let h_p = self.dim as f64 * binary_entropy_bits(self.pi);
        let excess: f64 = x0.iter().map(|&v| v as f64 - self.pi).sum();
        let weight = self.beta(1) + self.alpha_bar(self.steps());
        let logit = (self.pi / (1.0 - self.pi)).ln();
        self.entropy_xt_given_x0_bits(self.steps(), x0) - self.entropy_xt_given_x0_bits(1, x0) - h_p
            + weight * logit * excess / std::f64::consts::LN_2
    }

    /// The mean of [`BinomialDiffusion::bound_constant_bits`] over the sequences of `x0`
    /// (`[n, d]` row-major): the entropies of a 0 and a 1 bit at t = 1 and T are computed once,
    /// other values each on their own.
    pub fn mean_bound_constant_bits(&self, x0: &[f32]) -> f64 {
        let n = x0.len() / self.dim.max(1);
        if n == 0 {
            return 0.0;
        }
        let steps = self.steps();
        // H(X_T | x) - H(X_1 | x) for one bit x
        let difference = |x: f64| {
            binary_entropy_bits(self.q_one(steps, x)) - binary_entropy_bits(self.q_one(1, x))
        };
        let (zero, one) = (difference(0.0), difference(1.0));
        let entropies: f64 = x0
            .iter()
            .map(|&v| {
                if v == 0.0 {
                    zero
                } else if v == 1.0 {
                    one
                } else {
                    difference(v as f64)
                }
            })
            .sum();
        let excess: f64 = x0.iter().map(|&v| v as f64 - self.pi).sum();
        let weight = self.beta(1) + self.alpha_bar(steps);
        let logit = (self.pi / (1.0 - self.pi)).ln();
        (entropies + weight * logit * excess / std::f64::consts::LN_2) / n as f64
            - self.dim as f64 * binary_entropy_bits(self.pi)
    }

    /// H_q(X_t | X_0 = x0) in bits: the bits are independent given x0.
    pub fn entropy_xt_given_x0_bits(&self, t: usize, x0: &[f32]) -> f64 {
        x0.iter()
            .map(|&x| binary_entropy_bits(self.q_one(t, x as f64)))
            .sum()
    }

    /// L_null for one sequence: its log-likelihood under i.i.d. Bernoulli(pi), in bits.
    pub fn l_null_bits(&self, x0: &[f32]) -> f64 {
        x0.iter()
            .map(|&x| {
                if x >= 0.5 {
                    self.pi.log2()
                } else {
                    (1.0 - self.pi).log2()
                }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat_process() -> BinomialDiffusion {
        BinomialDiffusion::new(
            crate::BetaSchedule::Reciprocal.raw_betas(2000).unwrap(),
            0.2,
            20,
        )
        .unwrap()
    }

    #[test]
    fn closed_form_matches_golden_and_composed_kernel() {
        let p = heartbeat_process();
        // golden (scripts/golden/core.py, output core.json): abar_1000 = 0.5 at T = 2000
        assert!((p.alpha_bar(1000) - 0.5).abs() < 1e-12);
        assert_eq!(p.alpha_bar(2000), 0.0);
        // Compose the one-step kernel t times: P(x_t = 1) as a two-state Markov chain.
        let q = BinomialDiffusion::new(vec![0.1, 0.3, 0.05, 0.6, 0.2], 0.3, 1).unwrap();
        for x0 in [0.0, 1.0] {
            let mut p1 = x0;
            for t in 1..=5 {
                p1 = p1 * q.forward_kernel(t, 1.0) + (1.0 - p1) * q.forward_kernel(t, 0.0);
                assert!((p1 - q.q_one(t, x0)).abs() < 1e-14, "t={t}");
            }
        }
    }

    #[test]
    fn posterior_matches_golden() {
        // scripts/golden/core.py (output core.json), binomial_T2000_pi0.2
        let p = heartbeat_process();
        let cases = [
            (500, 0.0, 0.0, 2.7995371506714703e-05),
            (500, 0.0, 1.0, 0.9974680879413724),
            (500, 1.0, 0.0, 0.002132978014656908),
            (500, 1.0, 1.0, 0.9999667554963357),
            (2, 0.0, 0.0, 4.002801560811972e-08),
            (2, 0.0, 1.0, 0.4997998999499475),
            (2, 1.0, 0.0, 0.5000500250125338),
            (2, 1.0, 1.0, 0.9999999599479484),
        ];
        for (t, x0, xt, want) in cases {
            let got = p.posterior_one(t, x0, xt);
            assert!(
                (got - want).abs() < 1e-12 * want.max(1e-3),
                "t={t} x0={x0} xt={xt}: {got}"
            );
        }
    }

    /// Brute-force Bayes: q(x_{t-1} | x_t, x_0) = q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0),
    /// every (x_0, x_t) and several t, on a schedule unlike the default.
    #[test]
    fn posterior_is_bayes_rule() {
        let q = BinomialDiffusion::new(vec![0.05, 0.2, 0.1, 0.4, 0.3, 1.0], 0.35, 1).unwrap();
        for t in 1..=6 {
            for x0 in [0.0, 1.0] {
                for xt in [0.0, 1.0] {
                    let lik = |prev: f64| {
                        let k = q.forward_kernel(t, prev);
                        if xt == 1.0 { k } else { 1.0 - k }
                    };
                    let prior1 = q.q_one(t - 1, x0);
                    let joint1 = lik(1.0) * prior1;
                    let joint0 = lik(0.0) * (1.0 - prior1);
                    let bayes = joint1 / (joint1 + joint0);
                    let marginal = if xt == 1.0 {
                        q.q_one(t, x0)
                    } else {
                        1.0 - q.q_one(t, x0)
                    };
                    assert!((joint1 + joint0 - marginal).abs() < 1e-14);
                    assert!((q.posterior_one(t, x0, xt) - bayes).abs() < 1e-14);
                }
            }
        }
    }

    #[test]
    fn heartbeat_entropy_terms_match_golden() {
        // scripts/golden/core.py (output core.json), heartbeat_T2000_pi0.2
        let p = heartbeat_process();
        let mut x0 = [0.0f32; 20];
        for i in (2..20).step_by(5) {
            x0[i] = 1.0;
        }
        assert!((p.entropy_xt_given_x0_bits(1, &x0) - 0.04393672660196964).abs() < 1e-12);
        assert!((p.l_null_bits(&x0) - -14.438561897747245).abs() < 1e-12);
        assert!((20.0 * binary_entropy_bits(0.2) - 14.438561897747245).abs() < 1e-12);
        // abar_T = 0, so H_q(X_T | X_0) = H_p(X_T) and the constant is -H_q(X_1 | X_0).
        assert!((p.bound_constant_bits(&x0) + 0.04393672660196964).abs() < 1e-12);
    }

    #[test]
    fn kl_bernoulli_closed_forms() {
        assert!(kl_bernoulli_scalar(0.3, 0.3).abs() < 1e-15);
        let want = 0.2 * (0.2f64 / 0.6).ln() + 0.8 * (0.8f64 / 0.4).ln();
        assert!((kl_bernoulli_scalar(0.2, 0.6) - want).abs() < 1e-15);
        assert!((kl_bernoulli_scalar(0.0, 0.25) - (1.0f64 / 0.75).ln()).abs() < 1e-15);
    }

    #[test]
    fn bad_processes_are_refused() {
        assert!(BinomialDiffusion::new(vec![0.1, 0.2], 0.0, 3).is_err());
        assert!(BinomialDiffusion::new(vec![0.1, 1.2], 0.2, 3).is_err());
        assert!(BinomialDiffusion::new(vec![0.1], 0.2, 3).is_err());
    }

    /// The batch mean equals the mean of the per-sequence constants, for bits and for values
    /// between them.
    #[test]
    fn mean_bound_constant_is_the_mean_over_sequences() {
        let q = BinomialDiffusion::new(vec![0.05, 0.2, 0.1, 0.4, 0.3, 1.0], 0.35, 4).unwrap();
        let x0: Vec<f32> = (0..4 * 7)
            .map(|i| match i % 5 {
                0 | 3 => 1.0,
                4 if i > 10 => 0.3 + 0.01 * i as f32,
                _ => 0.0,
            })
            .collect();
        let per_row: f64 = x0
            .chunks_exact(4)
            .map(|r| q.bound_constant_bits(r))
            .sum::<f64>()
            / 7.0;
        let mean = q.mean_bound_constant_bits(&x0);
        assert!((mean - per_row).abs() < 1e-12, "{mean} vs {per_row}");
    }
}
