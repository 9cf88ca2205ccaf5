//! The binary heartbeat (paper section 3.2, SPEC section 3): sequences of `length` bits with a 1
//! every `period`-th bin, the first pulse uniform over the first `period` bins.

use rand::Rng as _;

use crate::{DataError, Rng};

/// The heartbeat distribution: `period` equally likely sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    length: usize,
    period: usize,
}

impl Heartbeat {
    /// The paper's setting is `length = 20`, `period = 5`.
    pub fn new(length: usize, period: usize) -> Result<Self, DataError> {
        if period == 0 || length < period {
            return Err(DataError::Invalid(format!(
                "heartbeat needs 1 <= period <= length, got period {period}, length {length}"
            )));
        }
        Ok(Self { length, period })
    }

    /// Bits per sequence.
    pub fn length(&self) -> usize {
        self.length
    }

    /// Bins between pulses.
    pub fn period(&self) -> usize {
        self.period
    }

    /// The sequence whose first pulse is at bin `phase` (< period).
    pub fn sequence(&self, phase: usize) -> Vec<f32> {
        (0..self.length)
            .map(|i| {
                if i >= phase && (i - phase).is_multiple_of(self.period) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The phase of a valid sequence, `None` for any other bit pattern.
    pub fn phase_of(&self, bits: &[f32]) -> Option<usize> {
        (0..self.period).find(|&p| {
            bits.len() == self.length
                && bits
                    .iter()
                    .zip(self.sequence(p))
                    .all(|(&b, s)| (b >= 0.5) == (s >= 0.5))
        })
    }

    /// The exact entropy in bits: log2 of the number of distinct, equally likely sequences.
    pub fn entropy_bits(&self) -> f64 {
        (self.period as f64).log2()
    }

    /// The mean activity (share of ones) of the distribution: the natural stationary rate pi.
    pub fn mean_activity(&self) -> f64 {
        let ones: usize = (0..self.period)
            .map(|p| (self.length - p).div_ceil(self.period))
            .sum();
        ones as f64 / (self.period * self.length) as f64
    }

    /// The exact conditional over the phases given observed bits (paper section 2.5's target):
    /// each observation is (bin, bit, flip probability e), with e = 0 for a known bit
    /// (inpainting) and e in (0, 1) for a bit seen through noise that flips it with probability
    /// e (denoising). Returns P(phase | observations) for each phase, by enumerating the
    /// `period` sequences: P(phase) ∝ Π e^[seq ≠ bit] (1 − e)^[seq = bit].
    pub fn phase_posterior(
        &self,
        observations: &[(usize, bool, f64)],
    ) -> Result<Vec<f64>, DataError> {
        for &(bin, _, e) in observations {
            if bin >= self.length {
                return Err(DataError::Invalid(format!(
                    "bin {bin} is past the sequence's {} bits",
                    self.length
                )));
            }
            if !(0.0..1.0).contains(&e) {
                return Err(DataError::Invalid(format!(
                    "flip probability {e} of bin {bin} is not in [0, 1)"
                )));
            }
        }
        let weights: Vec<f64> = (0..self.period)
            .map(|phase| {
                let seq = self.sequence(phase);
                observations
                    .iter()
                    .map(
                        |&(bin, bit, e)| {
                            if (seq[bin] >= 0.5) == bit { 1.0 - e } else { e }
                        },
                    )
                    .product::<f64>()
            })
            .collect();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(DataError::Invalid(
                "no heartbeat sequence agrees with the known bits".into(),
            ));
        }
        Ok(weights.into_iter().map(|w| w / total).collect())
    }

    /// A seeded stream of sequences.
    pub fn stream_with(&self, rng: Rng) -> HeartbeatStream {
        HeartbeatStream { beat: *self, rng }
    }
}

/// A seeded stream of heartbeat sequences.
#[derive(Debug, Clone)]
pub struct HeartbeatStream {
    beat: Heartbeat,
    rng: Rng,
}

impl HeartbeatStream {
    /// The stream's generator: its position (`get_word_pos`/`set_word_pos`) is the stream's
    /// whole state, which is what a checkpoint saves and a resumed run restores.
    pub fn rng_mut(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The next `n` sequences, row-major `[n, length]` of 0.0/1.0.
    pub fn next_batch(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * self.beat.length);
        for _ in 0..n {
            let phase = self.rng.random_range(0..self.beat.period);
            out.extend(self.beat.sequence(phase));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_heartbeat() {
        let h = Heartbeat::new(20, 5).unwrap();
        assert_eq!(h.sequence(2).iter().filter(|&&b| b == 1.0).count(), 4);
        assert_eq!(h.sequence(0)[..6], [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert!((h.entropy_bits() - 2.321928094887362).abs() < 1e-15);
        assert!((h.mean_activity() - 0.2).abs() < 1e-15);
        for p in 0..5 {
            assert_eq!(h.phase_of(&h.sequence(p)), Some(p));
        }
        let mut bad = h.sequence(1);
        bad[7] = 1.0;
        assert_eq!(h.phase_of(&bad), None);
    }

    #[test]
    fn phases_are_uniform_and_seeded() {
        let h = Heartbeat::new(20, 5).unwrap();
        let batch = h.stream_with(crate::rng(1, 0)).next_batch(50_000);
        assert_eq!(batch, h.stream_with(crate::rng(1, 0)).next_batch(50_000));
        let mut counts = [0usize; 5];
        for row in batch.chunks(20) {
            counts[h.phase_of(row).expect("valid")] += 1;
        }
        // binomial s.d. of each count is sqrt(50000 * 0.2 * 0.8) = 89
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 450.0, "{counts:?}");
        }
    }

    #[test]
    fn phase_posterior_by_enumeration() {
        let h = Heartbeat::new(20, 5).unwrap();
        // a 1 at bin 7 fixes the phase at 2
        assert_eq!(
            h.phase_posterior(&[(7, true, 0.0)]).unwrap(),
            [0.0, 0.0, 1.0, 0.0, 0.0]
        );
        // 0s at bins 0 and 6 rule out phases 0 and 1: the other three stay equally likely
        let p = h
            .phase_posterior(&[(0, false, 0.0), (6, false, 0.0)])
            .unwrap();
        for (k, want) in [0.0, 0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]
            .iter()
            .enumerate()
        {
            assert!((p[k] - want).abs() < 1e-15, "{p:?}");
        }
        // noisy bits: 1 at bin 3, 0 at bin 8 (both point at phase 3, and against it), e = 0.1:
        // phase 3 has (0.9)(0.1), phases 0, 1, 2, 4 have (0.1)(0.9); all five are equal
        let p = h
            .phase_posterior(&[(3, true, 0.1), (8, false, 0.1)])
            .unwrap();
        assert!(p.iter().all(|&v| (v - 0.2).abs() < 1e-15), "{p:?}");
        // 1 at bin 3 and 1 at bin 9 (phases 3 and 4), 0 at bin 0: weights by hand
        let obs = [(3, true, 0.1), (9, true, 0.1), (0, false, 0.1)];
        let p = h.phase_posterior(&obs).unwrap();
        let w = [
            0.1 * 0.1 * 0.1,
            0.1 * 0.1 * 0.9,
            0.1 * 0.1 * 0.9,
            0.9 * 0.1 * 0.9,
            0.1 * 0.9 * 0.9,
        ];
        let total: f64 = w.iter().sum();
        for k in 0..5 {
            assert!((p[k] - w[k] / total).abs() < 1e-15, "{p:?}");
        }
        // contradictions and bad input are errors
        assert!(
            h.phase_posterior(&[(0, true, 0.0), (1, true, 0.0)])
                .is_err()
        );
        assert!(h.phase_posterior(&[(20, true, 0.0)]).is_err());
        assert!(h.phase_posterior(&[(2, true, 1.0)]).is_err());
    }

    #[test]
    fn phase_posterior_matches_rejection_sampling() {
        // An independent route: draw sequences, flip the observed bits with their e, keep the
        // draws whose observed bits match; the kept phases' frequencies estimate the posterior.
        let h = Heartbeat::new(20, 5).unwrap();
        let obs = [(3usize, true, 0.1), (9, true, 0.25), (0, false, 0.1)];
        let exact = h.phase_posterior(&obs).unwrap();
        let mut rng = crate::rng(5, 1);
        let mut stream = h.stream_with(crate::rng(5, 0));
        let mut counts = [0usize; 5];
        let mut kept = 0usize;
        while kept < 40_000 {
            let seq = stream.next_batch(1);
            let agree = obs.iter().all(|&(bin, bit, e)| {
                let flipped = rng.random::<f64>() < e;
                ((seq[bin] >= 0.5) != flipped) == bit
            });
            if agree {
                counts[h.phase_of(&seq).unwrap()] += 1;
                kept += 1;
            }
        }
        for k in 0..5 {
            let f = counts[k] as f64 / kept as f64;
            let se = (exact[k] * (1.0 - exact[k]) / kept as f64).sqrt();
            assert!(
                (f - exact[k]).abs() < 4.0 * se + 1e-12,
                "phase {k}: {f} vs {}",
                exact[k]
            );
        }
    }

    #[test]
    fn uneven_lengths_and_bad_parameters() {
        let h = Heartbeat::new(7, 3).unwrap();
        // phases 0, 1, 2 give 3, 2, 2 ones in 7 bins
        assert!((h.mean_activity() - 7.0 / 21.0).abs() < 1e-15);
        assert!(Heartbeat::new(3, 5).is_err());
        assert!(Heartbeat::new(3, 0).is_err());
    }
}
