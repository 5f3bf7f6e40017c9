//! A multi-task model (MT-DNN's student): one BERT encoder shared by a head per task. kd saves
//! it whole (the encoder once, each head as `tasks.NAME.classifier.*`, the heads described by
//! `kd_tasks` in `config.json`) and, for every other tool, as one HF
//! `BertForSequenceClassification` directory per task under `tasks/NAME/`.

use crate::task_model::{TASKS_KEY, TaskModel, copy_tokenizer_files};
use anyhow::{Context, Result, bail};
use candle_core::Device;
use kd_bert::{BertConfig, Params, Precision, ProblemType};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One task's head: its name (a folder name) and what it predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHead {
    pub name: String,
    /// Class names by index (one placeholder name for regression).
    pub labels: Vec<String>,
    pub problem_type: ProblemType,
}

impl TaskHead {
    /// The head `model` has, under `name`.
    pub fn of(name: &str, model: &TaskModel) -> Self {
        Self {
            name: name.to_string(),
            labels: model.labels.clone(),
            problem_type: model.problem_type,
        }
    }
}

pub struct MultiTaskModel {
    /// Every parameter under its multi-task name: `bert.*` once, `tasks.NAME.classifier.*`.
    pub params: Params,
    /// Each task's model: the shared encoder (the same variables) with that task's head.
    pub tasks: Vec<(String, TaskModel)>,
    /// The encoder's config, without a head.
    config: BertConfig,
}

impl MultiTaskModel {
    /// New heads for `heads` on `encoder`'s encoder (its own head is left out), each
    /// initialised as BERT does from `seed` plus the head's index.
    pub fn new(encoder: &TaskModel, heads: &[TaskHead], seed: u64) -> Result<Self> {
        let max_len = encoder.tokenizer.max_len();
        let mut tasks = Vec::with_capacity(heads.len());
        for (index, head) in heads.iter().enumerate() {
            let model = head_on(encoder, head, max_len)?;
            model.params.init_bert_where(
                model.config.initializer_range,
                seed.wrapping_add(index as u64),
                |name| !name.starts_with("bert."),
            )?;
            tasks.push((head.name.clone(), model));
        }
        Self::assemble(encoder_config(&encoder.config), tasks)
    }

    /// Loads a multi-task model that [`MultiTaskModel::save`] wrote.
    pub fn load(dir: &Path, max_len: usize, device: &Device) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let heads: Vec<TaskHead> = config
            .extra
            .get(TASKS_KEY)
            .cloned()
            .map(serde_json::from_value)
            .transpose()?
            .with_context(|| format!("{} is not a multi-task model", dir.display()))?;
        let Some(first) = heads.first() else {
            bail!("multi-task model {} has no tasks", dir.display());
        };
        let config = encoder_config(&config);
        let encoder = TaskModel::build_on(
            head_config(&config, first),
            Params::new(device),
            dir,
            max_len,
        )?;
        let mut tasks = vec![(first.name.clone(), encoder)];
        for head in &heads[1..] {
            tasks.push((head.name.clone(), head_on(&tasks[0].1, head, max_len)?));
        }
        let model = Self::assemble(config, tasks)?;
        model
            .params
            .load(&dir.join("model.safetensors"), |_| false)?;
        Ok(model)
    }

    fn assemble(config: BertConfig, tasks: Vec<(String, TaskModel)>) -> Result<Self> {
        let mut names = std::collections::BTreeSet::new();
        for (name, _) in &tasks {
            if name.is_empty() || name.contains(['/', '\\', '.']) || !names.insert(name) {
                bail!("task name {name:?} must be unique, non-empty, and have no '/' or '.'");
            }
        }
        let device = tasks
            .first()
            .map(|(_, model)| model.params.device().clone());
        let params = Params::new(&device.unwrap_or(Device::Cpu));
        for (index, (name, model)) in tasks.iter().enumerate() {
            for (var_name, var) in model.params.vars() {
                match var_name.starts_with("bert.") {
                    true if index == 0 => params.insert(var_name, var),
                    true => {}
                    false => params.insert(format!("tasks.{name}.{var_name}"), var),
                }
            }
        }
        Ok(Self {
            params,
            tasks,
            config,
        })
    }

    /// Runs the shared encoder's products in `precision` for every task.
    pub fn set_precision(&mut self, precision: Precision) {
        for (_, model) in &mut self.tasks {
            model.set_precision(precision);
        }
    }

    pub fn heads(&self) -> Vec<TaskHead> {
        self.tasks
            .iter()
            .map(|(name, model)| TaskHead::of(name, model))
            .collect()
    }

    /// Writes the whole model for kd into `dir` (`config.json` with `kd_tasks`,
    /// `model.safetensors`, the tokenizer files), each file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut config = self.config.clone();
        config
            .extra
            .insert(TASKS_KEY.into(), serde_json::to_value(self.heads())?);
        config.write(&dir.join("config.json"))?;
        self.params.save(&dir.join("model.safetensors"))?;
        copy_tokenizer_files(&self.tasks[0].1.tokenizer_dir, dir)
    }

    /// Writes each task's model as an HF `BertForSequenceClassification` directory,
    /// `dir/tasks/NAME/`.
    pub fn save_tasks(&self, dir: &Path) -> Result<()> {
        for (name, model) in &self.tasks {
            let task_dir = dir.join("tasks").join(name);
            std::fs::create_dir_all(&task_dir)
                .with_context(|| format!("cannot create {}", task_dir.display()))?;
            model.save(&task_dir)?;
        }
        Ok(())
    }

    /// The number of parameters: the encoder once, every head.
    pub fn num_parameters(&self) -> usize {
        self.params.num_parameters()
    }
}

/// `encoder`'s encoder (the same variables) with a head for `head`, unset.
fn head_on(encoder: &TaskModel, head: &TaskHead, max_len: usize) -> Result<TaskModel> {
    TaskModel::build_on(
        head_config(&encoder_config(&encoder.config), head),
        Params::sharing(&encoder.params, "bert."),
        &encoder.tokenizer_dir,
        max_len,
    )
}

/// `config` without a task head.
fn encoder_config(config: &BertConfig) -> BertConfig {
    let mut config = config.clone();
    config.architectures = None;
    config.id2label = None;
    config.label2id = None;
    config.problem_type = None;
    config.extra.remove(TASKS_KEY);
    config
}

fn head_config(encoder: &BertConfig, head: &TaskHead) -> BertConfig {
    let mut config = encoder.clone();
    config.set_classification_head(&head.labels, head.problem_type);
    config
}
