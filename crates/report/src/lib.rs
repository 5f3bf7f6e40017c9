//! Looking at models and runs: models side by side against a reference ([`compare`]), which
//! attention heads matter ([`heads`]), pruning heads and feed-forward neurons ([`prune`]),
//! attention maps ([`attention`]), batch-1 latency ([`latency`], measured in a child process
//! by [`child`]), and charts drawn with plotters as PNG and SVG: labelled points, curves
//! against a shared axis, panels and heatmaps ([`charts`]), and the learning curves of a run's
//! logs ([`learning_curves`]). The `kd compare`, `heads`, `prune`, `attention` and `report`
//! commands are shells over it.
//!
//! A distilled student beside its teacher on SST-2's dev set (the models of `kd-runner`'s
//! example; GLUE's files in `../shared/data/glue`):
//!
//! ```no_run
//! use kd_report::compare::{self, CompareArgs};
//! use kd_runner::options::DeviceArg;
//!
//! # fn main() -> anyhow::Result<()> {
//! let comparison = compare::run(&CompareArgs {
//!     models: vec!["runs/my-student".into()],
//!     teacher: Some("runs/teachers/SST-2".into()),
//!     data: kd_data::DataSpec {
//!         task: Some("SST-2".into()),
//!         ..Default::default()
//!     },
//!     out: None,
//!     force: false,
//!     bootstrap: 1000,
//!     threads: 2,
//!     onnx_python: None,
//!     device: DeviceArg { name: None },
//! })?;
//! println!("{}", comparison.table);
//! let student = &comparison.rows[1];
//! println!("agreement with the teacher {:?}, p50 {:.2} ms", student.agreement, student.costs.p50_ms);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod charts;
pub mod child;
pub mod compare;
mod curves;
pub mod heads;
pub mod latency;
pub mod prune;

pub use curves::learning_curves;
