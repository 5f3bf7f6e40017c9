//! `kd finetune`: a backbone (or a model with a head) trained on a task's labels, the best
//! epoch saved as an HF model directory; checkpointed and resumable.

use crate::options::{DeviceArg, shared_dir};
use anyhow::{Result, bail};
use clap::Args;
use kd_bert::Precision;
use kd_data::DataSpec;
use kd_teacher::{FinetuneReport, ModelFiles, TaskModel};
use kd_train::{RunDir, RunInputs, TrainerConfig};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// What to fine-tune, on what, and how.
#[derive(Args, Clone)]
pub struct FinetuneArgs {
    /// Hub id (e.g. sentence-transformers/all-MiniLM-L6-v2) or local model directory.
    #[arg(long)]
    pub model: String,
    /// Output directory (refused if not empty, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Write into --out even when it is not empty.
    #[arg(long)]
    pub force: bool,
    /// Continue the interrupted run in --out from its last checkpoint.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Evaluate and checkpoint every N updates, besides each epoch's end.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Peak learning rate, reached after warmup, then decayed linearly to 0.
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Training examples per update.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Seed for the task head's initialisation, the data order and dropout.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of the updates spent on linear warmup.
    #[arg(long, default_value_t = 0.1)]
    pub warmup: f64,
    /// AdamW's decoupled weight decay (not on biases and layer norms).
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Quick setting: stop after this many updates.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// f32, or bf16: the encoder's products in bf16, with f32 master weights, loss and
    /// optimizer state.
    #[arg(long, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Where the model trains.
    #[command(flatten)]
    pub device: DeviceArg,
    /// The task, trained on its training file and evaluated on its dev file.
    #[command(flatten, next_help_heading = "Data")]
    pub data: DataSpec,
}

/// Fine-tunes as `args` say into `args.out` (`command` is recorded in the run's files);
/// returns early with a checkpoint, `interrupted` set, when `stop` is raised.
pub fn run(args: &FinetuneArgs, stop: &AtomicBool, command: &str) -> Result<FinetuneReport> {
    if !args.data.unlabeled.is_empty() || args.data.max_unlabeled.is_some() {
        bail!("kd finetune learns from labels only; unlabeled text is for kd distill's recipes");
    }
    let config = TrainerConfig {
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        max_steps: args.max_steps,
        eval_every: args.eval_every,
        ..TrainerConfig::default()
    };
    // Settings first: a refusal should not wait for the data and the model to load.
    config.check()?;
    let data = args.data.load(&shared_dir(), Vec::new())?;
    let spec = &data.spec;
    let files = ModelFiles::resolve(&args.model)?;
    let device = args.device.select()?;
    args.precision.check(&device)?;
    let mut model = TaskModel::from_backbone(
        &files,
        spec.kind,
        &data.labels,
        args.seed,
        args.data.max_seq_len,
        &device,
    )?;
    model.set_precision(args.precision);
    let mut settings =
        serde_json::json!({ "model": args.model, "data": args.data, "training": config });
    // Named only when not f32: runs begun before the flag existed still resume.
    if !args.precision.is_f32() {
        settings["precision"] = serde_json::json!(args.precision);
    }
    let mut inputs = RunInputs::new(&settings)?;
    for file in args
        .data
        .files(&shared_dir())?
        .iter()
        .chain([&files.config, &files.weights])
    {
        inputs.file(file)?;
    }
    // Everything is loaded and checked before the output directory is touched.
    let out = RunDir::for_run(&args.out, args.force, args.resume, &inputs)?;
    eprintln!(
        "fine-tuning {} ({} parameters) on {}: {} train, {} dev examples",
        args.model,
        model.params.num_parameters(),
        spec.name,
        data.train.len(),
        data.dev.len()
    );
    kd_teacher::finetune(&model, &data, &config, &out, args.resume, stop, command)
}
