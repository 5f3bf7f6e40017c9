//! Learning curves from a run's `log.jsonl` (a fine-tuning run's, or each stage's of a
//! distillation run): every loss component and every dev value against the step, as PNG and
//! SVG (`kd report RUN_DIR`).

use crate::charts::{self, Series};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Training curves are averaged over this share of the steps, so that noise does not hide
/// the trend.
const SMOOTHING_SHARE: usize = 100;

/// Draws the curves of the run in `run` into `out` (`RUN/report` by default) and returns the
/// files written.
pub fn learning_curves(run: &Path, out: Option<&Path>) -> Result<Vec<PathBuf>> {
    let logs = find_logs(run)?;
    let out = out.map_or_else(|| run.join("report"), Path::to_path_buf);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut written = Vec::new();
    for (name, log) in logs {
        let (train, dev, window) = read_log(&log)?;
        let groups = vec![
            (format!("training losses (mean of {window} steps)"), train),
            ("held-out / dev".to_string(), dev),
        ];
        let title = format!("{}: {name}", run.display());
        written.extend(charts::panels(&out.join(&name), &title, "step", &groups)?);
    }
    Ok(written)
}

/// `(chart name, log)`: the run's own log, or each stage's, in stage order.
fn find_logs(run: &Path) -> Result<Vec<(String, PathBuf)>> {
    if run.join("log.jsonl").is_file() {
        return Ok(vec![("curves".to_string(), run.join("log.jsonl"))]);
    }
    let mut stages: Vec<(String, PathBuf)> = std::fs::read_dir(run)
        .with_context(|| format!("cannot read {}", run.display()))?
        .flatten()
        .filter(|entry| entry.path().join("log.jsonl").is_file())
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.path().join("log.jsonl"))
        })
        .collect();
    if stages.is_empty() {
        bail!(
            "{} has no log.jsonl, nor stage folders with one",
            run.display()
        );
    }
    stages.sort();
    Ok(stages)
}

/// The smoothed training curves, the dev curves and the smoothing window.
fn read_log(path: &Path) -> Result<(Vec<Series>, Vec<Series>, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut train: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut dev: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let entry: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), number + 1))?;
        if let Some(step) = entry["step"].as_f64() {
            let mut values = vec![("loss".to_string(), entry["loss"].as_f64())];
            if let Some(components) = entry["components"].as_object() {
                values.extend(components.iter().map(|(k, v)| (k.clone(), v.as_f64())));
            }
            for (name, value) in values {
                if let Some(value) = value {
                    train.entry(name).or_default().push((step, value));
                }
            }
        } else if let Some(evaluation) = entry.get("evaluation") {
            let step = evaluation["step"].as_f64().unwrap_or_default();
            for (name, value) in evaluation["dev"].as_object().into_iter().flatten() {
                if let Some(value) = value.as_f64() {
                    dev.entry(name.clone()).or_default().push((step, value));
                }
            }
        }
    }
    let steps = train.get("loss").map_or(0, Vec::len);
    let window = (steps / SMOOTHING_SHARE).max(1);
    let train = train
        .into_iter()
        .map(|(name, points)| (name, moving_average(&points, window)))
        .collect();
    Ok((train, dev.into_iter().collect(), window))
}

/// The mean of each `window` consecutive points, at the last one's step.
fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    points
        .chunks(window)
        .map(|chunk| {
            let mean = chunk.iter().map(|p| p.1).sum::<f64>() / chunk.len() as f64;
            (chunk[chunk.len() - 1].0, mean)
        })
        .collect()
}
