//! Beta schedules `b_1..b_T` for the forward process, each computed in `f64`.

use serde::{Deserialize, Serialize};

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    /// The trajectory is too short for the bound, whose KL sum runs over t = 2..T.
    #[error("trajectory length T = {0} is too short: T must be at least 2")]
    TooShort(usize),
    /// A beta is outside the open interval (0, 1).
    #[error("beta at t = {t} is {value}, outside the open interval (0, 1)")]
    BetaOutOfRange {
        /// 1-based step.
        t: usize,
        /// The offending value.
        value: f64,
    },
    /// A schedule parameter is invalid.
    #[error("invalid schedule parameter: {0}")]
    InvalidParameter(String),
    /// The cumulative product abar_t does not decrease strictly.
    #[error("abar_t is not strictly decreasing at t = {0}")]
    NonMonotone(usize),
}

/// A named beta schedule. The names are the ones the configuration files use (`kind = "..."`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BetaSchedule {
    /// `b_t = linspace(start, end, T)[t]` (Ho et al. 2020 use 1e-4 to 0.02 at T = 1000).
    Linear {
        /// b_1.
        start: f64,
        /// b_T.
        end: f64,
    },
    /// `b_t = linspace(sqrt(start), sqrt(end), T)[t]^2`.
    Quadratic {
        /// b_1.
        start: f64,
        /// b_T.
        end: f64,
    },
    /// A logistic ramp: `b_t = start + (end - start) sigmoid(linspace(-6, 6, T)[t])`.
    Sigmoid {
        /// The lower plateau.
        start: f64,
        /// The upper plateau.
        end: f64,
    },
    /// Nichol and Dhariwal 2021, eq. 17: `abar(t) = f(t)/f(0)`,
    /// `f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)`, `b_t = min(1 - abar_t/abar_{t-1}, max_beta)`.
    /// `t/T` is a floating-point division.
    Cosine {
        /// Offset that keeps b_1 from vanishing.
        #[serde(default = "default_cosine_s")]
        s: f64,
        /// Clip for the last betas.
        #[serde(default = "default_max_beta")]
        max_beta: f64,
    },
    /// The original code's `generate_beta_arr` (Sohl-Dickstein et al. 2015): with
    /// `base_t = 1/linspace(T, 2, T)[t]` and `m_t = min_beta` (plus `step1_beta` at t = 1),
    /// `b_t = m_t + base_t (1 - m_t - 1e-5)`. The schedule for which `b_t` erases a fixed share of
    /// the remaining signal each step.
    Paper {
        /// Added to b_1.
        #[serde(default = "default_step1_beta")]
        step1_beta: f64,
        /// Floor of every beta.
        #[serde(default = "default_min_beta")]
        min_beta: f64,
    },
    /// The paper's binomial schedule `b_t = 1/(T - t + 1)`: each step erases the same share of
    /// the original signal, abar_t = (T - t)/T, and b_T = 1 so x_T is exactly the stationary
    /// distribution. For binomial diffusion only (b_T = 1 is refused for a Gaussian process).
    Reciprocal,
    /// Learned (paper section 2.4.1): b_2..b_T are trained by gradient on K together with the
    /// network, b_1 stays fixed; they start from `init` (default `paper`). Each learned beta is
    /// `sigmoid(w_t)` of a free parameter, so it stays in (0, 1). The trained values live in the
    /// model record; [`betas`](Self::betas) gives the starting ones. Gaussian diffusion only.
    Learned {
        /// The schedule training starts from (not itself `learned`).
        #[serde(default = "default_learned_init")]
        init: Box<BetaSchedule>,
    },
}

fn default_learned_init() -> Box<BetaSchedule> {
    Box::new(BetaSchedule::paper())
}

fn default_cosine_s() -> f64 {
    0.008
}
fn default_max_beta() -> f64 {
    0.999
}
fn default_step1_beta() -> f64 {
    0.001
}
fn default_min_beta() -> f64 {
    1e-6
}

/// `n` evenly spaced points from `a` to `b` inclusive, as NumPy's `linspace`.
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            (0..n)
                .map(|i| if i == n - 1 { b } else { a + step * i as f64 })
                .collect()
        }
    }
}

impl BetaSchedule {
    /// The presentation's default: linear from 1e-4 to 0.1.
    pub fn linear(start: f64, end: f64) -> Self {
        Self::Linear { start, end }
    }

    /// The cosine schedule with its usual constants (s = 0.008, max_beta = 0.999).
    pub fn cosine() -> Self {
        Self::Cosine {
            s: default_cosine_s(),
            max_beta: default_max_beta(),
        }
    }

    /// The paper's schedule with the original code's constants.
    pub fn paper() -> Self {
        Self::Paper {
            step1_beta: default_step1_beta(),
            min_beta: default_min_beta(),
        }
    }

    /// The betas `b_1..b_T` (index 0 holds b_1) for a Gaussian process, validated: T >= 2,
    /// every beta in (0, 1).
    pub fn betas(&self, steps: usize) -> Result<Vec<f64>, ScheduleError> {
        let betas = self.raw_betas(steps)?;
        validate_betas(&betas)?;
        Ok(betas)
    }

    /// The betas with the schedule's own parameters checked but not the range of the values
    /// (a binomial process accepts b_T = 1).
    pub fn raw_betas(&self, steps: usize) -> Result<Vec<f64>, ScheduleError> {
        if steps < 2 {
            return Err(ScheduleError::TooShort(steps));
        }
        if let Self::Learned { init } = self {
            if matches!(**init, Self::Learned { .. }) {
                return Err(ScheduleError::InvalidParameter(
                    "a learned schedule's init must be a fixed schedule".into(),
                ));
            }
            return init.raw_betas(steps);
        }
        let betas = match *self {
            Self::Linear { start, end } => {
                check_range("start", start)?;
                check_range("end", end)?;
                linspace(start, end, steps)
            }
            Self::Quadratic { start, end } => {
                check_range("start", start)?;
                check_range("end", end)?;
                linspace(start.sqrt(), end.sqrt(), steps)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            Self::Sigmoid { start, end } => {
                check_range("start", start)?;
                check_range("end", end)?;
                linspace(-6.0, 6.0, steps)
                    .into_iter()
                    .map(|x| start + (end - start) / (1.0 + (-x).exp()))
                    .collect()
            }
            Self::Cosine { s, max_beta } => cosine_betas(s, max_beta, steps)?,
            Self::Paper {
                step1_beta,
                min_beta,
            } => paper_betas(step1_beta, min_beta, steps)?,
            Self::Reciprocal => (1..=steps).map(|t| 1.0 / (steps - t + 1) as f64).collect(),
            Self::Learned { .. } => unreachable!("handled above"),
        };
        Ok(betas)
    }
}

/// The cosine schedule's betas (offset `s`, each capped at `max_beta`), its parameters checked.
fn cosine_betas(s: f64, max_beta: f64, steps: usize) -> Result<Vec<f64>, ScheduleError> {
    if !(s.is_finite() && s >= 0.0) {
        return Err(ScheduleError::InvalidParameter(format!(
            "cosine offset s = {s} must be finite and >= 0"
        )));
    }
    check_range("max_beta", max_beta)?;
    let t_count = steps as f64;
    let f = |t: f64| {
        let angle = (t / t_count + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2;
        angle.cos().powi(2)
    };
    Ok((1..=steps)
        .map(|t| {
            let t = t as f64;
            (1.0 - f(t) / f(t - 1.0)).min(max_beta)
        })
        .collect())
}

/// The original code's schedule (`Paper`): `m_t + (1 - m_t - 1e-5) / linspace(T, 2, T)[t]`,
/// `m_t` being `min_beta` (plus `step1_beta` at t = 1), its parameters checked.
fn paper_betas(step1_beta: f64, min_beta: f64, steps: usize) -> Result<Vec<f64>, ScheduleError> {
    check_range("min_beta", min_beta)?;
    if !(step1_beta.is_finite() && step1_beta >= 0.0) {
        return Err(ScheduleError::InvalidParameter(format!(
            "step1_beta = {step1_beta} must be finite and >= 0"
        )));
    }
    let t_count = steps as f64;
    Ok(linspace(t_count, 2.0, steps)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let m = if i == 0 {
                min_beta + step1_beta
            } else {
                min_beta
            };
            m + (1.0 / v) * (1.0 - m - 1e-5)
        })
        .collect())
}

fn check_range(name: &str, value: f64) -> Result<(), ScheduleError> {
    if value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(ScheduleError::InvalidParameter(format!(
            "{name} = {value} must lie in (0, 1)"
        )))
    }
}

/// Checks a beta array: at least two steps, every beta in (0, 1), abar strictly decreasing.
pub fn validate_betas(betas: &[f64]) -> Result<(), ScheduleError> {
    if betas.len() < 2 {
        return Err(ScheduleError::TooShort(betas.len()));
    }
    let mut abar = 1.0;
    for (i, &b) in betas.iter().enumerate() {
        if !(b > 0.0 && b < 1.0) {
            return Err(ScheduleError::BetaOutOfRange { t: i + 1, value: b });
        }
        let next = abar * (1.0 - b);
        if next >= abar {
            return Err(ScheduleError::NonMonotone(i + 1));
        }
        abar = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol * b.abs().max(1e-300), "{a} vs {b}");
    }

    // Reference numbers: scripts/golden/core.py, output scripts/golden/core.json (NumPy, f64).
    #[test]
    fn cosine_t1000_matches_numpy() {
        let b = BetaSchedule::cosine().betas(1000).unwrap();
        close(b[0], 4.128422482196914e-05, 1e-9);
        close(b[1], 4.614175273665033e-05, 1e-9);
        close(b[2], 5.099948119891007e-05, 1e-9);
        close(b[500], 0.003155691441585007, 1e-9);
        close(b[999], 0.999, 1e-12);
        let abar: f64 = b.iter().map(|b| 1.0 - b).product();
        close(abar, 2.4287669070348567e-09, 1e-6);
    }

    #[test]
    fn cosine_is_not_the_integer_division_bug() {
        // With t/T done in integers, 999 betas are zero and one is 0.999.
        let b = BetaSchedule::cosine().betas(1000).unwrap();
        assert_eq!(b.iter().filter(|&&x| x >= 0.999).count(), 1);
        assert!(b[..999].iter().all(|&x| x > 1e-5 && x < 0.999));
    }

    #[test]
    fn paper_t40_matches_original_code() {
        let b = BetaSchedule::paper().betas(40).unwrap();
        close(b[0], 0.025975725, 1e-12);
        close(b[1], 0.025624896846254925, 1e-12);
        close(b[2], 0.02628103436657682, 1e-12);
        close(b[20], 0.048750463749999993, 1e-12);
        close(b[39], 0.4999955, 1e-12);
        let abar: f64 = b.iter().map(|b| 1.0 - b).product();
        close(abar, 0.022925210982389782, 1e-10);
    }

    #[test]
    fn paper_t1000_matches_original_code() {
        let b = BetaSchedule::paper().betas(1000).unwrap();
        close(b[0], 0.0019999889999999998, 1e-12);
        close(b[500], 0.0019989780220000006, 1e-12);
        close(b[999], 0.4999955, 1e-12);
        let abar: f64 = b.iter().map(|b| 1.0 - b).product();
        close(abar, 0.0009916122877183199, 1e-9);
    }

    #[test]
    fn linear_t100_matches_numpy() {
        let b = BetaSchedule::linear(1e-4, 0.1).betas(100).unwrap();
        close(b[1], 0.0011090909090909092, 1e-12);
        close(b[50], 0.05055454545454546, 1e-12);
        let abar: f64 = b.iter().map(|b| 1.0 - b).product();
        close(abar, 0.005618761019373728, 1e-10);
    }

    #[test]
    fn quadratic_and_sigmoid_span_their_ends() {
        let q = BetaSchedule::Quadratic {
            start: 1e-4,
            end: 0.02,
        }
        .betas(50)
        .unwrap();
        close(q[0], 1e-4, 1e-12);
        close(q[49], 0.02, 1e-12);
        // midpoint of the sqrt-linear ramp: ((sqrt(1e-4) + sqrt(0.02)) / 2)^2 at an odd count
        let q = BetaSchedule::Quadratic {
            start: 1e-4,
            end: 0.02,
        }
        .betas(51)
        .unwrap();
        close(
            q[25],
            ((1e-4f64.sqrt() + 0.02f64.sqrt()) / 2.0).powi(2),
            1e-12,
        );
        let s = BetaSchedule::Sigmoid {
            start: 1e-4,
            end: 0.02,
        }
        .betas(51)
        .unwrap();
        close(s[25], (1e-4 + 0.02) / 2.0, 1e-12);
        close(s[0], 1e-4 + (0.02 - 1e-4) / (1.0 + 6f64.exp()), 1e-12);
    }

    #[test]
    fn reciprocal_erases_a_fixed_share_per_step() {
        let b = BetaSchedule::Reciprocal.raw_betas(2000).unwrap();
        let mut abar = 1.0;
        for (i, beta) in b.iter().enumerate() {
            abar *= 1.0 - beta;
            let t = (i + 1) as f64;
            assert!((abar - (2000.0 - t) / 2000.0).abs() < 1e-12, "t = {t}");
        }
        assert_eq!(b[1999], 1.0);
        // b_T = 1 is fine for bits but not for a Gaussian process.
        assert!(matches!(
            BetaSchedule::Reciprocal.betas(2000),
            Err(ScheduleError::BetaOutOfRange { t: 2000, .. })
        ));
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert_eq!(
            BetaSchedule::linear(1e-4, 0.1).betas(0),
            Err(ScheduleError::TooShort(0))
        );
        assert!(BetaSchedule::linear(0.0, 0.1).betas(10).is_err());
        assert!(BetaSchedule::linear(1e-4, 1.0).betas(10).is_err());
        assert!(BetaSchedule::linear(f64::NAN, 0.1).betas(10).is_err());
        assert!(
            BetaSchedule::Cosine {
                s: -1.0,
                max_beta: 0.999
            }
            .betas(10)
            .is_err()
        );
        assert!(validate_betas(&[0.1, 1.5]).is_err());
        assert!(validate_betas(&[0.1, 0.0]).is_err());
    }

    #[test]
    fn schedules_parse_from_config_text() {
        let s: BetaSchedule = serde_json::from_str(r#"{"kind":"cosine"}"#).unwrap();
        assert_eq!(s, BetaSchedule::cosine());
        let s: BetaSchedule =
            serde_json::from_str(r#"{"kind":"linear","start":0.0001,"end":0.1}"#).unwrap();
        assert_eq!(s, BetaSchedule::linear(1e-4, 0.1));
        assert!(serde_json::from_str::<BetaSchedule>(r#"{"kind":"linear","start":0.1}"#).is_err());
        assert!(serde_json::from_str::<BetaSchedule>(r#"{"kind":"cosine","bogus":1}"#).is_err());
    }
}
