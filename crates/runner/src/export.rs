//! `kd export` as one call, for the command line and the Python package alike.

use anyhow::Result;
use kd_export::{ExportOptions, ExportReport};
use kd_teacher::ModelFiles;
use std::path::Path;

/// Writes a compact copy of `model` (hub id or directory) into `out` as `options` say; `out`
/// must be empty unless `force`. Everything is checked before `out` is created.
pub fn run(model: &str, out: &Path, force: bool, options: &ExportOptions) -> Result<ExportReport> {
    let model = ModelFiles::resolve(model)?;
    kd_export::check(&model, options)?;
    let out = kd_train::RunDir::create(out, force)?;
    kd_export::export(&model, out.path(), options)
}
