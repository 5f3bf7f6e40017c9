//! Teachers for kd: a model named by hub id (through `hf-hub`, honouring `HF_HOME`, offline
//! from a warm cache) or by local directory is resolved to its files, loaded as a BERT task
//! model (or as a backbone with its masked-LM head, for general distillation, or as a
//! multi-task model, heads on one encoder), fine-tuned on a task when it has no task head,
//! evaluated, and saved as a directory that HF transformers loads unchanged.

mod backbone;
mod cache;
mod finetune;
mod multitask;
mod resolve;
mod task_model;

pub use backbone::{Backbone, Pooling};
pub use cache::{CacheOutcome, CachedStates, TeacherCache};
pub use finetune::{FinetuneReport, finetune, task_loss};
pub use multitask::{MultiTaskModel, TaskHead};
pub use resolve::ModelFiles;
pub use task_model::{TaskModel, copy_tokenizer_files, dataset_labels, predictions};
