//! `kd distill` as one call: a [`Recipe`] (read from a file or built in memory) with the
//! command's quick settings applied, its output folder chosen, its device opened, and run by
//! the scheme it asks for: general distillation on a corpus ([`general::run`]), a multi-task
//! student ([`multitask::run`]) or one task ([`distill::run`]). The command line and the
//! Python package (`crates/python`) both go through [`run_recipe`].

use crate::distill::{self, DistillOptions};
use crate::general::{self, GeneralSummary};
use crate::multitask::{self, MultiTaskSummary};
use crate::recipe::Recipe;
use anyhow::Result;
use kd_bert::DeviceName;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// What `kd distill` takes besides its recipe.
pub struct RunOptions<'a> {
    /// The output folder; `None` for `runs/<recipe name>` ([`out_dir`]).
    pub out: Option<&'a Path>,
    /// Replace what `out` holds.
    pub force: bool,
    /// Continue the interrupted run in `out` from its last checkpoint.
    pub resume: bool,
    /// Where teacher outputs are cached, shared by runs with the same teacher and data.
    pub cache_dir: &'a Path,
    /// The shared data (GLUE's files under `data/glue`).
    pub shared_dir: &'a Path,
    /// Where to run; `None` for the recipe's `training.device`, else the default device.
    pub device: Option<DeviceName>,
    /// Quick setting: stop each stage after this many updates (`training.max_steps`).
    pub max_steps: Option<usize>,
    /// Quick setting: train on the first N training examples only (of each task).
    pub max_train_examples: Option<usize>,
    /// How the run was started, recorded in its summary.
    pub command: String,
}

/// What a run prints and writes to `summary.json`, by scheme; serialized as the summary
/// itself.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RunSummary {
    /// One task's run ([`distill::run`]).
    Task(distill::Summary),
    /// General distillation on a corpus ([`general::run`]).
    General(GeneralSummary),
    /// A multi-task student's run ([`multitask::run`]).
    MultiTask(MultiTaskSummary),
}

impl RunSummary {
    /// Whether `stop` ended the run early, a checkpoint saved for `resume`.
    pub fn interrupted(&self) -> bool {
        match self {
            Self::Task(summary) => summary.interrupted,
            Self::General(summary) => summary.interrupted,
            Self::MultiTask(summary) => summary.interrupted,
        }
    }
}

/// The folder a run of `recipe` writes: `out`, or `runs/<recipe name>`.
pub fn out_dir(recipe: &Recipe, out: Option<&Path>) -> PathBuf {
    out.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("runs").join(&recipe.name))
}

/// Runs `recipe` as `kd distill` does; returns early with a checkpoint, the summary's
/// `interrupted` set, when `stop` is raised. Everything is loaded and checked before the
/// output folder is touched.
pub fn run_recipe(
    mut recipe: Recipe,
    options: &RunOptions,
    stop: &AtomicBool,
) -> Result<RunSummary> {
    if let Some(steps) = options.max_steps {
        recipe.training.max_steps = Some(steps);
        recipe.check_training()?;
    }
    if let Some(examples) = options.max_train_examples {
        recipe.data.max_train_examples = Some(examples);
        for task in &mut recipe.tasks {
            task.data.max_train_examples = Some(examples);
        }
    }
    let out = out_dir(&recipe, options.out);
    let device = kd_bert::device::select(options.device.or(recipe.training.device))?;
    recipe.training.precision.check(&device)?;
    let distill_options = DistillOptions {
        device,
        out: &out,
        force: options.force,
        resume: options.resume,
        cache_dir: options.cache_dir,
        shared_dir: options.shared_dir,
        command: options.command.clone(),
    };
    Ok(if !recipe.data.corpus.is_empty() {
        RunSummary::General(general::run(&recipe, &distill_options, stop)?)
    } else if !recipe.tasks.is_empty() {
        RunSummary::MultiTask(multitask::run(&recipe, &distill_options, stop)?)
    } else {
        RunSummary::Task(distill::run(&recipe, &distill_options, stop)?)
    })
}
