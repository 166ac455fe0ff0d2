//! Percentiles and medians.

use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// The value at quantile `q` (0..=1) of a sorted slice, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Percentiles of nanosecond values, reported in microseconds; sorts `ns` in place.
pub fn percentiles_us(ns: &mut [u64]) -> Percentiles {
    if ns.is_empty() {
        return Percentiles::default();
    }
    ns.sort_unstable();
    let us = |v: u64| v as f64 / 1000.0;
    let sum: u128 = ns.iter().map(|&v| v as u128).sum();
    Percentiles {
        count: ns.len() as u64,
        min: us(ns[0]),
        p50: us(quantile(ns, 0.50)),
        p90: us(quantile(ns, 0.90)),
        p99: us(quantile(ns, 0.99)),
        max: us(ns[ns.len() - 1]),
        mean: sum as f64 / ns.len() as f64 / 1000.0,
    }
}

/// `points` evenly spaced quantiles of a sorted slice, in microseconds: a CDF to plot.
pub fn cdf_us(sorted: &[u64], points: usize) -> Vec<(f64, f64)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=points)
        .map(|k| {
            let q = k as f64 / points as f64;
            (quantile(sorted, q) as f64 / 1000.0, q)
        })
        .collect()
}

/// Median of the finite values; `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
