//! Statistics for comparing models on the same examples: a bootstrap interval for a metric,
//! McNemar's exact test between two classifiers, and agreement.

use crate::example::Label;
use crate::metrics::{Metric, Predictions, evaluate};
use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The percentile bootstrap interval of `metric` at `level` (0.95), over `resamples` draws of
/// the examples with replacement, seeded.
pub fn bootstrap_interval(
    metric: Metric,
    predictions: &Predictions,
    gold: &[Label],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<(f64, f64)> {
    anyhow::ensure!(resamples > 0, "a bootstrap interval needs resamples");
    let mut rng = StdRng::seed_from_u64(seed);
    let n = gold.len();
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let draw: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        let predictions = match predictions {
            Predictions::Classes(c) => Predictions::Classes(draw.iter().map(|&i| c[i]).collect()),
            Predictions::Scores(s) => Predictions::Scores(draw.iter().map(|&i| s[i]).collect()),
        };
        let gold: Vec<Label> = draw.iter().map(|&i| gold[i]).collect();
        values.push(evaluate(&[metric], &predictions, &gold)?[metric.name()]);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((q * resamples as f64) as usize).min(resamples - 1)];
    Ok((at((1.0 - level) / 2.0), at(1.0 - (1.0 - level) / 2.0)))
}

/// McNemar's exact test between two classifiers on the same examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    /// Examples only the first model gets right, and only the second.
    pub only_first: usize,
    pub only_second: usize,
    /// Two-sided exact p-value: the binomial test of the discordant pairs at 1/2.
    pub p_value: f64,
}

pub fn mcnemar(first_correct: &[bool], second_correct: &[bool]) -> McNemar {
    let only_first = first_correct
        .iter()
        .zip(second_correct)
        .filter(|&(&a, &b)| a && !b)
        .count();
    let only_second = first_correct
        .iter()
        .zip(second_correct)
        .filter(|&(&a, &b)| !a && b)
        .count();
    let n = only_first + only_second;
    let k = only_first.min(only_second);
    // P(X <= k) for X ~ Binomial(n, 1/2), in log space so that large n stays finite.
    let ln_choose = |n: usize, k: usize| ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k);
    let tail: f64 = (0..=k)
        .map(|i| (ln_choose(n, i) - n as f64 * std::f64::consts::LN_2).exp())
        .sum();
    McNemar {
        only_first,
        only_second,
        p_value: (2.0 * tail).min(1.0),
    }
}

fn ln_factorial(n: usize) -> f64 {
    (2..=n).map(|i| (i as f64).ln()).sum()
}

/// The share of examples on which two classifiers predict the same class.
pub fn agreement(first: &[usize], second: &[usize]) -> f64 {
    let same = first.iter().zip(second).filter(|(a, b)| a == b).count();
    same as f64 / first.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_test_by_hand() {
        // 5 against 1 discordant pairs: P(X <= 1) = (1 + 6) / 64, doubled.
        let first = [true, true, true, true, true, false, true, false];
        let second = [false, false, false, false, false, true, true, false];
        let test = mcnemar(&first, &second);
        assert_eq!((test.only_first, test.only_second), (5, 1));
        assert!(
            (test.p_value - 14.0 / 64.0).abs() < 1e-12,
            "{}",
            test.p_value
        );
        // No discordant pair: nothing to tell the models apart.
        assert_eq!(mcnemar(&[true], &[true]).p_value, 1.0);
        // Session 6's pooled counts, 87 against 68: p = 0.15 as reported.
        let first: Vec<bool> = (0..155).map(|i| i < 87).collect();
        let second: Vec<bool> = first.iter().map(|a| !a).collect();
        assert!((mcnemar(&first, &second).p_value - 0.148).abs() < 0.005);
        assert_eq!(agreement(&[1, 2, 3, 4], &[1, 2, 0, 4]), 0.75);
    }

    #[test]
    fn the_bootstrap_interval_brackets_the_metric_and_narrows_with_more_examples() {
        let interval = |n: usize| {
            let gold: Vec<Label> = (0..n).map(|i| Label::Class(i % 2)).collect();
            // Right on 4 examples in 5.
            let predicted = (0..n).map(|i| if i % 5 == 0 { 1 - i % 2 } else { i % 2 });
            let predictions = Predictions::Classes(predicted.collect());
            bootstrap_interval(Metric::Accuracy, &predictions, &gold, 500, 0.95, 1).unwrap()
        };
        let (low, high) = interval(100);
        assert!(low < 0.8 && 0.8 < high, "({low}, {high})");
        // The binomial standard error at n = 100 is 0.04: the 95% interval spans about 0.16.
        assert!((high - low - 0.157).abs() < 0.04, "({low}, {high})");
        let (low_big, high_big) = interval(2500);
        assert!(high_big - low_big < (high - low) / 3.0);
        let none = Predictions::Classes(vec![0, 1]);
        let gold = [Label::Class(0), Label::Class(1)];
        let error = bootstrap_interval(Metric::Accuracy, &none, &gold, 0, 0.95, 1).unwrap_err();
        assert!(error.to_string().contains("needs resamples"), "{error}");
    }
}
