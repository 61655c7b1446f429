//! Percentiles, medians, means, and number formatting.

use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median, 99th percentile and maximum of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spread {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Spread {
    /// Nearest-rank percentiles of unsorted samples; None when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        Some(Spread {
            p50: percentile(samples, 50.0)?,
            p99: percentile(samples, 99.0)?,
            max: percentile(samples, 100.0)?,
        })
    }
}

/// The arithmetic mean; zero when empty.
pub fn mean(values: &[Duration]) -> Duration {
    values.iter().sum::<Duration>() / values.len().max(1) as u32
}

/// The middle value (the mean of the two middle ones for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        k if k % 2 == 1 => sorted[k / 2],
        k => (sorted[k / 2 - 1] + sorted[k / 2]) / 2.0,
    }
}

/// "0.58, 0.69, 0.53" (with `unit` after each: "1.41x, 1.36x").
pub fn ratios(values: &[f64], unit: &str) -> String {
    values
        .iter()
        .map(|r| format!("{r:.2}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn rate(count: u64, d: Duration) -> String {
    thousands((count as f64 / d.as_secs_f64().max(1e-9)).round() as u64)
}

pub fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&s, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&s, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&[], 99.0), None);
    }

    #[test]
    fn nearest_rank_of_few_samples() {
        let s = [30, 10, 20].map(Duration::from_millis);
        assert_eq!(percentile(&s, 0.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&s, 50.0), Some(Duration::from_millis(20)));
        assert_eq!(percentile(&s, 99.0), Some(Duration::from_millis(30)));
        let one = [Duration::from_millis(7)];
        assert_eq!(percentile(&one, 50.0), percentile(&one, 100.0));
    }

    #[test]
    fn spread_of_samples() {
        let s: Vec<Duration> = (1..=200).rev().map(Duration::from_millis).collect();
        assert_eq!(
            Spread::of(&s),
            Some(Spread {
                p50: Duration::from_millis(100),
                p99: Duration::from_millis(198),
                max: Duration::from_millis(200),
            })
        );
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn mean_of_durations() {
        let s = [1, 2, 6].map(Duration::from_secs);
        assert_eq!(mean(&s), Duration::from_secs(3));
        assert_eq!(mean(&[]), Duration::ZERO);
    }

    #[test]
    fn formats_durations_rates_and_sizes() {
        assert_eq!(secs(Duration::from_millis(1234)), "1.23 s");
        assert_eq!(ms(Duration::from_micros(2500)), "2.50 ms");
        assert_eq!(ms(Duration::from_millis(213)), "213 ms");
        assert_eq!(rate(10_000, Duration::from_secs(4)), "2,500");
        assert_eq!(rate(5, Duration::ZERO), "5,000,000,000");
        assert_eq!(mib(9 * 1024 + 512), "9.5 MiB");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[0.7, 0.55, 0.66]), 0.66);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
        assert!(median(&[]).is_nan());
        assert_eq!(ratios(&[1.414, 0.9], "x"), "1.41x, 0.90x");
    }

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
