//! The distillation runner: a TOML [`Recipe`] (teacher, student, data, training settings and
//! stages, each with its objective) run by [`distill::run`] for a task, [`general::run`] for
//! general distillation on a corpus, and [`multitask::run`] for MT-DNN's multi-task students;
//! teacher outputs are cached when they can be. The task model's own commands live here too:
//! [`finetune`], [`evaluate`] and [`predict`]. The `kd` command is a shell over them.
//!
//! Distil the shipped SST-2 DistilBERT recipe's student (a fine-tuned teacher in
//! `runs/teachers/SST-2`, GLUE's files in `../shared/data/glue`):
//!
//! ```no_run
//! use kd_runner::{DistillOptions, Recipe, distill};
//! use std::path::Path;
//! use std::sync::atomic::AtomicBool;
//!
//! # fn main() -> anyhow::Result<()> {
//! let recipe = Recipe::load(
//!     Path::new("experiments/recipes/sst2-distilbert-l3.toml"),
//!     &["stages.0.epochs=1".to_string()],
//! )?;
//! let options = DistillOptions {
//!     device: candle_core::Device::Cpu,
//!     out: Path::new("runs/my-student"),
//!     force: false,
//!     resume: false,
//!     cache_dir: Path::new("runs/cache"),
//!     shared_dir: Path::new("../shared"),
//!     command: "my program".to_string(),
//! };
//! let summary = distill::run(&recipe, &options, &AtomicBool::new(false))?;
//! println!("student accuracy {:.4}", summary.student.dev["accuracy"]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod distill;
pub mod evaluate;
pub mod export;
pub mod finetune;
pub mod general;
pub mod multitask;
pub mod options;
pub mod predict;
pub mod recipe;
pub mod run;

pub use distill::DistillOptions;
pub use recipe::Recipe;
pub use run::{RunOptions, RunSummary, run_recipe};
