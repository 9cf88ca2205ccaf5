//! Multiplying a reverse kernel by a factor r (paper section 2.5, eq. 16–21; SPEC section 6):
//! the closed forms of the product of one kernel coordinate with one factor.
//!
//! Sampling p̃(x_0) ∝ p(x_0) r(x_0) uses, at every step, p̃(x_{t-1} | x_t) ∝ p(x_{t-1} | x_t)
//! r(x_{t-1}). With a diagonal kernel and a factor per coordinate, each coordinate's product is
//! again a Gaussian or a Bernoulli, given here.

/// The product of a Gaussian kernel coordinate N(`mean`, `var`) with a Gaussian factor
/// N(`y`, `s2`) (`s2` > 0), normalised: returns (mean', var') with
/// var' = var s2 / (var + s2) and mean' = (mean s2 + y var) / (var + s2).
pub fn gaussian_product(mean: f64, var: f64, y: f64, s2: f64) -> (f64, f64) {
    let w = var / (var + s2);
    (mean * (1.0 - w) + y * w, var * (1.0 - w))
}

/// Several Gaussian factors N(y_i, s_i²) on one coordinate as one: (y, s²) with precision
/// 1/s² = Σ 1/s_i² and y the precision-weighted mean. `None` for an empty list.
pub fn combine_gaussian(factors: &[(f64, f64)]) -> Option<(f64, f64)> {
    if factors.is_empty() {
        return None;
    }
    let precision: f64 = factors.iter().map(|&(_, s2)| 1.0 / s2).sum();
    let weighted: f64 = factors.iter().map(|&(y, s2)| y / s2).sum();
    Some((weighted / precision, 1.0 / precision))
}

/// The log-likelihood ratio ln r(1) / r(0) of an observed bit `y` that is flipped with
/// probability `flip` (in (0, 1)).
pub fn bit_log_ratio(y: bool, flip: f64) -> f64 {
    let l = ((1.0 - flip) / flip).ln();
    if y { l } else { -l }
}

/// The product of a Bernoulli kernel coordinate (probability `f` of a 1) with an observed bit
/// `y` flipped with probability `flip`: f' = f (1 − e) / (f (1 − e) + (1 − f) e) for y = 1, and
/// f e / (f e + (1 − f)(1 − e)) for y = 0.
pub fn bernoulli_product(f: f64, y: bool, flip: f64) -> f64 {
    let (r1, r0) = if y {
        (1.0 - flip, flip)
    } else {
        (flip, 1.0 - flip)
    };
    f * r1 / (f * r1 + (1.0 - f) * r0)
}

/// Several observations (y_i, e_i) of one bit as one: the bit their log-likelihood ratios favour
/// and the flip probability 1 / (1 + e^|L|) that gives the same ratio L. `None` for an empty
/// list.
pub fn combine_bits(factors: &[(bool, f64)]) -> Option<(bool, f64)> {
    if factors.is_empty() {
        return None;
    }
    let l: f64 = factors.iter().map(|&(y, e)| bit_log_ratio(y, e)).sum();
    Some((l >= 0.0, 1.0 / (1.0 + l.abs().exp())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(x: f64, m: f64, v: f64) -> f64 {
        (-(x - m).powi(2) / (2.0 * v)).exp() / (2.0 * std::f64::consts::PI * v).sqrt()
    }

    #[test]
    fn gaussian_product_is_the_normalised_product_of_densities() {
        let (mean, var, y, s2) = (0.7, 0.3, -1.2, 0.09);
        let (m, v) = gaussian_product(mean, var, y, s2);
        // the closed form: precision-weighted mean, harmonic variance
        assert!((v - 0.3 * 0.09 / 0.39).abs() < 1e-15);
        assert!((m - (0.7 * 0.09 - 1.2 * 0.3) / 0.39).abs() < 1e-15);
        // the product of the two densities divided by N(m, v) is the same constant everywhere
        let ratio = |x: f64| normal(x, mean, var) * normal(x, y, s2) / normal(x, m, v);
        let r0 = ratio(0.0);
        for x in [-2.0, -1.0, -0.5, 0.3, 1.0] {
            assert!((ratio(x) / r0 - 1.0).abs() < 1e-12, "x = {x}");
        }
        // that constant is the evidence N(y; mean, var + s2)
        assert!((r0 / normal(y, mean, var + s2) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn combined_gaussian_factors_are_their_product() {
        let (y, s2) = combine_gaussian(&[(1.0, 0.5), (3.0, 0.25)]).unwrap();
        assert!((s2 - 1.0 / 6.0).abs() < 1e-15);
        assert!((y - (2.0 + 12.0) / 6.0).abs() < 1e-15);
        // multiplying by the two in turn is multiplying by the combined one
        let (m1, v1) = gaussian_product(0.2, 0.4, 1.0, 0.5);
        let (m2, v2) = gaussian_product(m1, v1, 3.0, 0.25);
        let (m, v) = gaussian_product(0.2, 0.4, y, s2);
        assert!((m - m2).abs() < 1e-14 && (v - v2).abs() < 1e-14);
        assert_eq!(combine_gaussian(&[]), None);
    }

    #[test]
    fn bernoulli_product_is_bayes_rule() {
        let f = 0.3;
        let e = 0.1;
        // y = 1: P(x = 1 | y = 1) = 0.3 0.9 / (0.3 0.9 + 0.7 0.1)
        assert!((bernoulli_product(f, true, e) - 0.27 / 0.34).abs() < 1e-15);
        assert!((bernoulli_product(f, false, e) - 0.03 / 0.66).abs() < 1e-15);
        // in logits it adds the log-likelihood ratio
        let logit = |p: f64| (p / (1.0 - p)).ln();
        for y in [false, true] {
            let lhs = logit(bernoulli_product(f, y, e));
            assert!((lhs - (logit(f) + bit_log_ratio(y, e))).abs() < 1e-12);
        }
        // a flip probability of one half carries no information
        assert!((bernoulli_product(f, true, 0.5) - f).abs() < 1e-15);
    }

    #[test]
    fn combined_bits_are_their_product() {
        let (y, e) = combine_bits(&[(true, 0.1), (false, 0.3)]).unwrap();
        let f = 0.4;
        let both = bernoulli_product(bernoulli_product(f, true, 0.1), false, 0.3);
        assert!(y);
        assert!((bernoulli_product(f, y, e) - both).abs() < 1e-14);
        // two equal and opposite observations cancel
        let (_, e) = combine_bits(&[(true, 0.2), (false, 0.2)]).unwrap();
        assert!((e - 0.5).abs() < 1e-15);
    }
}
