//! The floor / daemon ratio: each floor run's time over the time of the pass run right
//! after it, and the verdict on the median of these pairs. Both sides of a pair ran under
//! the same machine conditions (this VM's speed drifts by 20% within minutes); the ratio
//! of the means is printed too.

use std::time::Duration;

use crate::results::{holds, Results};
use crate::stats::{mean, median, ratios, secs};

/// The target: a pass at least 0.6 times as fast as the floor.
pub const TARGET: f64 = 0.6;

/// The floor-then-pass pairs of one size.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// floor / pass, per pair, in run order.
    pub pairs: Vec<f64>,
    pub median: f64,
    pub floor_mean: Duration,
    pub pass_mean: Duration,
}

impl Ratio {
    /// Pairs floor run i with pass run i (extra runs on either side pair with nothing);
    /// the means are over every run.
    pub fn of(floors: &[Duration], passes: &[Duration]) -> Self {
        let pairs: Vec<f64> = floors
            .iter()
            .zip(passes)
            .map(|(f, p)| f.as_secs_f64() / p.as_secs_f64())
            .collect();
        Ratio {
            median: median(&pairs),
            pairs,
            floor_mean: mean(floors),
            pass_mean: mean(passes),
        }
    }

    /// "0.66 (pairs: 0.55, 0.66, 0.68; ratio of the means 0.63 = 17.37 s / 27.83 s)".
    pub fn figure(&self) -> String {
        format!(
            "{:.2} (pairs: {}; ratio of the means {:.2} = {} / {})",
            self.median,
            ratios(&self.pairs, ""),
            self.floor_mean.as_secs_f64() / self.pass_mean.as_secs_f64(),
            secs(self.floor_mean),
            secs(self.pass_mean)
        )
    }

    pub fn holds(&self) -> bool {
        self.holds_at(TARGET)
    }

    /// Whether the median of the pairs reaches `target`.
    pub fn holds_at(&self, target: f64) -> bool {
        self.median >= target
    }

    /// The ratio's line for size `label`.
    pub fn line(&self, label: &str, results: &mut Results) {
        results.line(
            "ratio floor / daemon (median of floor-then-pass pairs)",
            label,
            self.figure(),
            ">= 0.6",
            holds(self.holds()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(v: &[f64]) -> Vec<Duration> {
        v.iter().copied().map(Duration::from_secs_f64).collect()
    }

    #[test]
    fn median_of_the_pairs_and_ratio_of_the_means() {
        let r = Ratio::of(&secs(&[10.0, 12.0, 9.0]), &secs(&[20.0, 15.0, 18.0]));
        assert_eq!(r.pairs, vec![0.5, 0.8, 0.5]);
        assert_eq!(r.median, 0.5);
        assert!(!r.holds());
        assert_eq!(
            r.figure(),
            "0.50 (pairs: 0.50, 0.80, 0.50; ratio of the means 0.58 = 10.33 s / 17.67 s)"
        );
    }

    #[test]
    fn holds_at_the_target() {
        let r = Ratio::of(&secs(&[6.0, 7.0]), &secs(&[10.0, 10.0]));
        assert!((r.median - 0.65).abs() < 1e-12);
        assert!(r.holds());
        let r = Ratio::of(&secs(&[6.0]), &secs(&[10.0]));
        assert!(r.holds());
    }

    #[test]
    fn unpaired_runs_count_in_the_means_only() {
        let r = Ratio::of(&secs(&[5.0, 5.0]), &secs(&[10.0]));
        assert_eq!(r.pairs, vec![0.5]);
        assert_eq!(r.floor_mean, Duration::from_secs(5));
        assert_eq!(r.pass_mean, Duration::from_secs(10));
    }
}
