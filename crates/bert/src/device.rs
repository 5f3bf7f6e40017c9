//! The device a run computes on, as users name it (`--device cpu|cuda|cuda:N`, a recipe's
//! `training.device`), and the default: the first GPU when kd was built with CUDA and one is
//! visible, else the CPU.

use anyhow::{Context, Result, bail};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A device as named on the command line or in a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceName {
    Cpu,
    /// A CUDA GPU by index (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceName {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match name.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(index)) => Ok(Self::Cuda(index)),
                _ => bail!("unknown device {name:?}: expected cpu, cuda or cuda:N"),
            },
        }
    }
}

impl TryFrom<String> for DeviceName {
    type Error = anyhow::Error;

    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

impl From<DeviceName> for String {
    fn from(name: DeviceName) -> Self {
        name.to_string()
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl DeviceName {
    /// Opens the device. A GPU asked of a kd built without CUDA, or one that cannot be opened
    /// (no driver, an index past the GPUs visible), is an error that says so.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) if !candle_core::utils::cuda_is_available() => bail!(
                "--device {self}: this kd was built without CUDA; build it with \
                 `cargo build --release --features cuda` (README.md, \"On a GPU\")"
            ),
            Self::Cuda(index) => Device::new_cuda(index).with_context(|| {
                format!(
                    "--device {self}: cannot open GPU {index} (is an NVIDIA driver installed, \
                     and is {index} below the number of GPUs that nvidia-smi lists?)"
                )
            }),
        }
    }

    /// The name of an open device.
    pub fn of(device: &Device) -> Self {
        match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => Self::Cuda(gpu_id),
            _ => Self::Cpu,
        }
    }
}

/// The device asked for, or by default the first GPU when kd was built with CUDA and one
/// opens, else the CPU; printed on standard error, as every run starts. In a data-parallel job
/// each rank of a machine takes its own GPU: `cuda:N` means GPU N plus the rank's place among
/// the machine's ranks (so `cuda`, and the default, give rank i GPU i).
pub fn select(asked: Option<DeviceName>) -> Result<Device> {
    let local_rank = kd_parallel::world().local_rank();
    let own = |name| match name {
        DeviceName::Cuda(index) => DeviceName::Cuda(index + local_rank),
        DeviceName::Cpu => DeviceName::Cpu,
    };
    let device = match asked {
        Some(name) => own(name).open()?,
        None if candle_core::utils::cuda_is_available() => {
            own(DeviceName::Cuda(0)).open().unwrap_or(Device::Cpu)
        }
        None => Device::Cpu,
    };
    let name = DeviceName::of(&device);
    let line = match asked {
        Some(_) => format!("device: {name}"),
        None => format!("device: {name} (the default; --device picks another)"),
    };
    // Said once while it stays the same: a process calling kd many times (from Python) is
    // not told before every call.
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if *last != line {
        eprintln!("{line}");
        *last = line;
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_print_and_round_trip_through_toml() {
        for (text, name) in [
            ("cpu", DeviceName::Cpu),
            ("cuda", DeviceName::Cuda(0)),
            ("cuda:3", DeviceName::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceName>().unwrap(), name);
        }
        assert_eq!(DeviceName::Cuda(0).to_string(), "cuda:0");
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Training {
            device: DeviceName,
        }
        let training: Training = toml::from_str("device = \"cuda:1\"").unwrap();
        assert_eq!(training.device, DeviceName::Cuda(1));
        let text = toml::to_string(&training).unwrap();
        assert_eq!(toml::from_str::<Training>(&text).unwrap(), training);
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let error = bad.parse::<DeviceName>().unwrap_err().to_string();
            assert!(
                error.contains("expected cpu, cuda or cuda:N"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_gpu_on_a_build_without_cuda_names_the_feature() {
        if candle_core::utils::cuda_is_available() {
            return;
        }
        let error = DeviceName::Cuda(0).open().unwrap_err().to_string();
        assert!(error.contains("--features cuda"), "{error}");
        assert!(matches!(select(None).unwrap(), Device::Cpu));
    }
}
