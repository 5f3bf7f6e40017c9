//! Fine-tuning a task model on a task's training set with cross-entropy (or mean squared
//! error for regression), through the shared training loop.

use crate::task_model::TaskModel;
use anyhow::Result;
use candle_core::{D, Tensor, Var};
use kd_bert::Mode;
use kd_data::{EncodedExample, TaskData, TaskKind, TaskSpec, collate};
use kd_train::{Evaluation, RunDir, StepLoss, Trainable, TrainerConfig, train};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// The summary `kd finetune` prints and writes to `metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneReport {
    pub task: String,
    /// The metric that selects the best evaluation, and its best value.
    pub metric: String,
    pub value: f64,
    pub best_epoch: usize,
    pub best_step: usize,
    pub epochs: usize,
    pub train_examples: usize,
    pub wall_time_s: f64,
    /// Training examples per second, evaluation excluded.
    pub examples_per_s: f64,
    pub history: Vec<Evaluation>,
    pub interrupted: bool,
    pub command: String,
}

/// The training loss: cross-entropy for classes, mean squared error for scores.
pub fn task_loss(kind: TaskKind, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(match kind {
        TaskKind::Classification => candle_nn::loss::cross_entropy(logits, labels)?,
        TaskKind::Regression => candle_nn::loss::mse(&logits.squeeze(D::Minus1)?, labels)?,
    })
}

struct Finetuning<'a> {
    model: &'a TaskModel,
    spec: &'a TaskSpec,
    train: Vec<EncodedExample>,
    dev: Vec<EncodedExample>,
}

const EVAL_BATCH_SIZE: usize = 128;

impl Trainable for Finetuning<'_> {
    fn parameters(&self) -> Vec<(String, Var)> {
        self.model.params.vars()
    }

    fn example_lengths(&self) -> Vec<usize> {
        self.train.iter().map(|e| e.ids.len()).collect()
    }

    fn loss(&self, indices: &[usize], _step: usize, _total_steps: usize) -> Result<StepLoss> {
        let batch = collate(&self.train, indices, self.model.params.device())?;
        let logits = self
            .model
            .model
            .logits(&batch.input, None, Mode::Train { dropout: true })?;
        // A rank's share of the batch mean under data parallelism (kd_losses::global_means).
        let rows = indices.len() as f64;
        let total = task_loss(self.model.task_kind(), &logits, &batch.labels)?
            .affine(rows / kd_losses::mean_count(rows), 0.0)?;
        Ok(StepLoss {
            components: BTreeMap::from([("task".into(), total.to_scalar::<f32>()? as f64)]),
            total,
        })
    }

    fn reseed_dropout(&self, seed: u64) {
        self.model.model.bert.dropout_rng().reseed(seed);
    }

    fn evaluate(&self) -> Result<BTreeMap<String, f64>> {
        self.model.evaluate(self.spec, &self.dev, EVAL_BATCH_SIZE)
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        self.model.save(dir)
    }
}

/// Fine-tunes `model` on `data`, keeping the best evaluation (by the task's first metric) in
/// `out`, and writes `metrics.json` there.
pub fn finetune(
    model: &TaskModel,
    data: &TaskData,
    config: &TrainerConfig,
    out: &RunDir,
    resume: bool,
    stop: &AtomicBool,
    command: &str,
) -> Result<FinetuneReport> {
    let started = Instant::now();
    let task = Finetuning {
        model,
        spec: &data.spec,
        train: model.encode(&data.train)?,
        dev: model.encode(&data.dev)?,
    };
    let metric = data.spec.metrics[0].name();
    let state = train(&task, config, metric, out, resume, stop)?;
    let best = state
        .evaluations
        .iter()
        .find(|evaluation| evaluation.step == state.best_step);
    let report = FinetuneReport {
        task: data.spec.name.clone(),
        metric: metric.to_string(),
        value: state.best_value.unwrap_or(f64::NAN),
        best_epoch: best.map_or(0, |evaluation| evaluation.epoch),
        best_step: state.best_step,
        epochs: config.epochs,
        train_examples: task.train.len(),
        wall_time_s: started.elapsed().as_secs_f64(),
        examples_per_s: state.examples_per_s(),
        history: state.evaluations,
        interrupted: state.interrupted,
        command: command.to_string(),
    };
    kd_bert::write_json_atomically(&out.join("metrics.json"), &report)?;
    Ok(report)
}
