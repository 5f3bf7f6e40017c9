//! Fine-tuning a task model: AdamW (no decay on biases and layer norms), linear warmup and
//! decay, gradient clipping, dev evaluation after each epoch, the best epoch kept on disk.

use crate::task_model::TaskModel;
use anyhow::{Result, bail};
use candle_core::{D, Device, Tensor};
use kd_bert::Mode;
use kd_data::{TaskData, TaskKind, batch_plan, collate};
use kd_train::{AdamW, AdamWConfig, LinearSchedule, Progress, RunDir};
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
    /// Fraction of the updates spent warming the learning rate up.
    pub warmup: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Stop after this many updates (a quick setting); the last epoch is then partial.
    pub max_steps: Option<usize>,
    pub eval_batch_size: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            lr: 5e-5,
            batch_size: 32,
            seed: 42,
            warmup: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            max_steps: None,
            eval_batch_size: 128,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: usize,
    pub train_loss: f64,
    pub dev: BTreeMap<String, f64>,
    pub examples_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FinetuneReport {
    pub task: String,
    /// The metric that selects the best epoch, and its best value.
    pub metric: String,
    pub value: f64,
    pub best_epoch: usize,
    pub epochs: usize,
    pub train_examples: usize,
    pub wall_time_s: f64,
    /// Training examples per second, evaluation excluded.
    pub examples_per_s: f64,
    pub history: Vec<EpochRecord>,
    pub command: String,
}

/// The training loss: cross-entropy for classes, mean squared error for scores.
fn task_loss(kind: TaskKind, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(match kind {
        TaskKind::Classification => candle_nn::loss::cross_entropy(logits, labels)?,
        TaskKind::Regression => candle_nn::loss::mse(&logits.squeeze(D::Minus1)?, labels)?,
    })
}

/// Fine-tunes `model` on `data` and saves its best epoch (by the task's first metric) into
/// `out`, with `metrics.json` rewritten after every epoch.
pub fn finetune(
    model: &TaskModel,
    data: &TaskData,
    config: &FinetuneConfig,
    out: &RunDir,
    command: &str,
) -> Result<FinetuneReport> {
    let started = Instant::now();
    let train = model.encode(&data.train)?;
    let dev = model.encode(&data.dev)?;
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let total_steps = config
        .max_steps
        .unwrap_or(usize::MAX)
        .min(steps_per_epoch * config.epochs);
    let schedule = LinearSchedule {
        peak: config.lr,
        warmup_steps: (total_steps as f64 * config.warmup).round() as usize,
        total_steps,
    };
    let mut optimizer = AdamW::new(
        model.params.vars(),
        AdamWConfig {
            weight_decay: config.weight_decay,
            max_grad_norm: Some(config.max_grad_norm),
            ..AdamWConfig::default()
        },
    );
    let mut rng = StdRng::seed_from_u64(config.seed);
    model.model.bert.dropout_rng().reseed(config.seed);
    let metric = data.spec.metrics[0].name().to_string();
    let kind = model.task_kind();

    let mut report = FinetuneReport {
        task: data.spec.name.clone(),
        metric: metric.clone(),
        value: f64::NEG_INFINITY,
        best_epoch: 0,
        epochs: 0,
        train_examples: train.len(),
        wall_time_s: 0.0,
        examples_per_s: 0.0,
        history: Vec::new(),
        command: command.to_string(),
    };
    let (mut step, mut train_seconds, mut examples_seen) = (0, 0.0, 0usize);
    let progress = Progress::new(total_steps as u64, &format!("finetune {}", data.spec.name));
    for epoch in 1..=config.epochs {
        if step >= total_steps {
            break;
        }
        let epoch_start = Instant::now();
        let (mut loss_sum, mut epoch_examples, mut epoch_steps) = (0.0, 0, 0);
        for indices in batch_plan(&lengths, config.batch_size, Some(&mut rng)) {
            if step >= total_steps {
                break;
            }
            let batch = collate(&train, &indices, &Device::Cpu)?;
            let (logits, _) = model
                .model
                .forward(&batch.input, Mode::Train { dropout: true })?;
            let loss = task_loss(kind, &logits, &batch.labels)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                bail!(
                    "training loss is {loss_value} at epoch {epoch}, step {step}: stopping; the best \
                     checkpoint so far (if any) is kept in {}",
                    out.path().display()
                );
            }
            optimizer.step(&loss.backward()?, schedule.lr(step))?;
            step += 1;
            epoch_steps += 1;
            loss_sum += loss_value * batch.len() as f64;
            epoch_examples += batch.len();
            let rate = epoch_examples as f64 / epoch_start.elapsed().as_secs_f64();
            progress.step(format!(
                "epoch {epoch} loss {:.4} {rate:.0} ex/s",
                loss_sum / epoch_examples as f64
            ));
        }
        let epoch_seconds = epoch_start.elapsed().as_secs_f64();
        train_seconds += epoch_seconds;
        examples_seen += epoch_examples;
        let dev_metrics = model.evaluate(&data.spec, &dev, config.eval_batch_size)?;
        let value = dev_metrics[&metric];
        progress.println(format!(
            "epoch {epoch}: train loss {:.4}, dev {}",
            loss_sum / epoch_examples.max(1) as f64,
            format_metrics(&dev_metrics)
        ));
        report.history.push(EpochRecord {
            epoch,
            steps: epoch_steps,
            train_loss: loss_sum / epoch_examples.max(1) as f64,
            dev: dev_metrics,
            examples_per_s: epoch_examples as f64 / epoch_seconds,
        });
        if value > report.value {
            report.value = value;
            report.best_epoch = epoch;
            model.save(out.path())?;
        }
        report.epochs = epoch;
        report.examples_per_s = examples_seen as f64 / train_seconds;
        report.wall_time_s = started.elapsed().as_secs_f64();
        write_json(&out.join("metrics.json"), &report)?;
    }
    progress.finish();
    Ok(report)
}

pub fn format_metrics(metrics: &BTreeMap<String, f64>) -> String {
    metrics
        .iter()
        .map(|(name, value)| format!("{name} {:.2}%", value * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_json(path: &std::path::Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    kd_bert::write_atomically(path, |tmp| Ok(std::fs::write(tmp, text)?))
}
