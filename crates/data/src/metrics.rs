//! The metrics GLUE reports, as fractions (0.9 is 90%): accuracy, binary F1 (positive class
//! 1), Matthews correlation, Pearson and Spearman correlation.

use crate::example::Label;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    F1,
    Matthews,
    Pearson,
    Spearman,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Matthews => "matthews",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
        }
    }
}

/// Model predictions for a dev set, in example order.
#[derive(Debug, Clone)]
pub enum Predictions {
    Classes(Vec<usize>),
    Scores(Vec<f32>),
}

/// Computes each metric of `metrics` for `predictions` against the gold labels.
pub fn evaluate(
    metrics: &[Metric],
    predictions: &Predictions,
    gold: &[Label],
) -> Result<BTreeMap<String, f64>> {
    let mut values = BTreeMap::new();
    for &metric in metrics {
        let value = match predictions {
            Predictions::Classes(predicted) => {
                let gold = gold
                    .iter()
                    .map(|label| match label {
                        Label::Class(c) => Ok(*c),
                        Label::Score(_) => bail!("class predictions against score labels"),
                        Label::Unlabeled => bail!("an unlabeled example cannot be scored"),
                    })
                    .collect::<Result<Vec<_>>>()?;
                check_lengths(predicted.len(), gold.len())?;
                match metric {
                    Metric::Accuracy => accuracy(predicted, &gold),
                    Metric::F1 => f1(predicted, &gold),
                    Metric::Matthews => matthews(predicted, &gold),
                    _ => bail!("{} needs score predictions", metric.name()),
                }
            }
            Predictions::Scores(predicted) => {
                let gold = gold
                    .iter()
                    .map(|label| match label {
                        Label::Score(s) => Ok(*s as f64),
                        Label::Class(_) => bail!("score predictions against class labels"),
                        Label::Unlabeled => bail!("an unlabeled example cannot be scored"),
                    })
                    .collect::<Result<Vec<_>>>()?;
                check_lengths(predicted.len(), gold.len())?;
                let predicted: Vec<f64> = predicted.iter().map(|&p| p as f64).collect();
                match metric {
                    Metric::Pearson => pearson(&predicted, &gold),
                    Metric::Spearman => pearson(&ranks(&predicted), &ranks(&gold)),
                    _ => bail!("{} needs class predictions", metric.name()),
                }
            }
        };
        values.insert(metric.name().to_string(), value);
    }
    Ok(values)
}

fn check_lengths(predicted: usize, gold: usize) -> Result<()> {
    if predicted != gold {
        bail!("{predicted} predictions for {gold} labels");
    }
    Ok(())
}

fn accuracy(predicted: &[usize], gold: &[usize]) -> f64 {
    let correct = predicted.iter().zip(gold).filter(|(p, g)| p == g).count();
    correct as f64 / gold.len().max(1) as f64
}

/// Counts of (true positives, false positives, false negatives, true negatives), class 1
/// being positive.
fn confusion(predicted: &[usize], gold: &[usize]) -> (f64, f64, f64, f64) {
    let mut counts = (0.0, 0.0, 0.0, 0.0);
    for (&p, &g) in predicted.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => counts.0 += 1.0,
            (true, false) => counts.1 += 1.0,
            (false, true) => counts.2 += 1.0,
            (false, false) => counts.3 += 1.0,
        }
    }
    counts
}

fn f1(predicted: &[usize], gold: &[usize]) -> f64 {
    let (tp, fp, fn_, _) = confusion(predicted, gold);
    if tp == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fn_)
}

/// Matthews correlation, generalised to several classes (Gorodkin's R_K, as scikit-learn).
fn matthews(predicted: &[usize], gold: &[usize]) -> f64 {
    let classes = predicted.iter().chain(gold).max().map_or(0, |m| m + 1);
    let mut confusion = vec![vec![0.0f64; classes]; classes];
    for (&p, &g) in predicted.iter().zip(gold) {
        confusion[g][p] += 1.0;
    }
    let n = predicted.len() as f64;
    let correct: f64 = (0..classes).map(|k| confusion[k][k]).sum();
    let true_counts: Vec<f64> = confusion.iter().map(|row| row.iter().sum()).collect();
    let predicted_counts: Vec<f64> = (0..classes)
        .map(|k| confusion.iter().map(|row| row[k]).sum())
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let numerator = correct * n - dot(&true_counts, &predicted_counts);
    let denominator = ((n * n - dot(&predicted_counts, &predicted_counts))
        * (n * n - dot(&true_counts, &true_counts)))
    .sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean_x = x.iter().sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let (mut cov, mut var_x, mut var_y) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        cov += (a - mean_x) * (b - mean_y);
        var_x += (a - mean_x).powi(2);
        var_y += (b - mean_y).powi(2);
    }
    if var_x == 0.0 || var_y == 0.0 {
        0.0
    } else {
        cov / (var_x * var_y).sqrt()
    }
}

/// Ranks starting at 1, ties sharing their average rank (for Spearman's correlation).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        while end + 1 < order.len() && values[order[end + 1]] == values[order[start]] {
            end += 1;
        }
        let average = (start + end) as f64 / 2.0 + 1.0;
        for &index in &order[start..=end] {
            ranks[index] = average;
        }
        start = end + 1;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(values: &[usize]) -> Vec<Label> {
        values.iter().map(|&c| Label::Class(c)).collect()
    }

    fn metric(metric: Metric, predicted: &[usize], gold: &[usize]) -> f64 {
        let predictions = Predictions::Classes(predicted.to_vec());
        evaluate(&[metric], &predictions, &classes(gold)).unwrap()[metric.name()]
    }

    #[test]
    fn classification_metrics_match_hand_computed_values() {
        let predicted = [1, 1, 0, 0, 1, 0];
        let gold = [1, 0, 0, 1, 1, 0];
        // tp=2 fp=1 fn=1 tn=2
        assert!((metric(Metric::Accuracy, &predicted, &gold) - 4.0 / 6.0).abs() < 1e-12);
        assert!((metric(Metric::F1, &predicted, &gold) - 4.0 / 6.0).abs() < 1e-12);
        // (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 3 / 9
        assert!((metric(Metric::Matthews, &predicted, &gold) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(metric(Metric::Matthews, &[1, 1, 1], &[1, 0, 1]), 0.0);
    }

    #[test]
    fn correlations_match_hand_computed_values() {
        let gold: Vec<Label> = [1.0, 2.0, 3.0, 4.0].map(Label::Score).to_vec();
        let predicted = Predictions::Scores(vec![1.0, 3.0, 2.0, 2.0]);
        let values = evaluate(&[Metric::Pearson, Metric::Spearman], &predicted, &gold).unwrap();
        // x-mean: [-1.5,-.5,.5,1.5], y-mean: [-1,1,0,0]; cov=1, var_x=5, var_y=2
        assert!((values["pearson"] - 1.0 / 10f64.sqrt()).abs() < 1e-6);
        // ranks of y: [1, 4, 2.5, 2.5], deviations [-1.5,1.5,0,0]: cov=1.5, var 5 and 4.5
        assert!((values["spearman"] - 1.5 / 22.5f64.sqrt()).abs() < 1e-6);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        let error = evaluate(
            &[Metric::Accuracy],
            &Predictions::Classes(vec![0]),
            &classes(&[0, 1]),
        );
        assert!(
            error
                .unwrap_err()
                .to_string()
                .contains("1 predictions for 2 labels")
        );
    }
}
