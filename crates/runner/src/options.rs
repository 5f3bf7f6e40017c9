//! Command-line pieces that several commands share: `--device`, where the shared data lives,
//! and a task model's dev examples.

use anyhow::{Result, bail};
use candle_core::Device;
use clap::Args;
use kd_bert::DeviceName;
use kd_data::DataSpec;
use kd_teacher::TaskModel;
use std::path::PathBuf;

/// `--device`: where a command's models run.
#[derive(Args, Clone, Copy)]
pub struct DeviceArg {
    /// cpu, cuda or cuda:N [default: the first GPU when kd was built with CUDA and one is
    /// visible, else the CPU].
    #[arg(long = "device", value_name = "DEVICE")]
    pub name: Option<DeviceName>,
}

impl DeviceArg {
    /// Opens the device (printing which), before anything is written.
    pub fn select(self) -> Result<Device> {
        kd_bert::device::select(self.name)
    }
}

/// The shared data and model cache: `$KD_SHARED_DIR`, or `../shared`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("KD_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared"))
}

/// The task `data` names, its dev file (the task's, or `--dev`) and the file's examples
/// encoded for `model` (named `name`), which must answer that kind of task.
pub fn dev_examples(
    model: &TaskModel,
    name: &str,
    data: &DataSpec,
) -> Result<(kd_data::TaskSpec, PathBuf, Vec<kd_data::EncodedExample>)> {
    let spec = data.task_spec()?;
    if model.task_kind() != spec.kind {
        bail!(
            "model {name} is a {:?} model but task {} is {:?}",
            model.task_kind(),
            spec.name,
            spec.kind
        );
    }
    let path = data.dev_path(&shared_dir())?;
    let mut labels = model.dataset_labels();
    let examples = spec.read(&path, &mut labels)?;
    let encoded = model.encode(&examples)?;
    Ok((spec, path, encoded))
}
