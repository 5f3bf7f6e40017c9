//! `kd eval`: a task model's metrics on a task's dev file (or another file).

use crate::options::{DeviceArg, dev_examples};
use anyhow::Result;
use clap::Args;
use kd_data::DataSpec;
use kd_teacher::TaskModel;

/// The model and the data to evaluate it on.
#[derive(Args, Clone)]
pub struct EvalArgs {
    /// A task model directory (with a task head).
    #[arg(long)]
    pub model: String,
    /// Examples per forward pass.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Where the model runs.
    #[command(flatten)]
    pub device: DeviceArg,
    /// The task; it is evaluated on its dev file (--dev, or --data, names another TSV).
    #[command(flatten, next_help_heading = "Data")]
    pub data: DataSpec,
}

/// The task, the file, its number of examples and the metrics by name, as JSON.
pub fn run(args: &EvalArgs) -> Result<serde_json::Value> {
    args.data.ensure_no_training_options("kd eval")?;
    let device = args.device.select()?;
    let model = TaskModel::open(&args.model, args.data.max_seq_len, &device)?;
    let (spec, path, examples) = dev_examples(&model, &args.model, &args.data)?;
    let metrics = model.evaluate(&spec, &examples, args.batch_size)?;
    Ok(serde_json::json!({
        "task": spec.name,
        "data": path,
        "examples": examples.len(),
        "metrics": metrics,
    }))
}
