//! `kd export` as one call, for the command line and the Python package alike.

use anyhow::Result;
use kd_export::{ExportOptions, ExportReport};
use kd_teacher::ModelFiles;
use std::path::Path;

/// Writes a compact copy of `model` (hub id or directory) into `out` as `options` say; `out`
/// must be empty unless `force`, which replaces an earlier model there whole. Everything is
/// checked before anything is written, and an export that fails leaves nothing behind.
pub fn run(model: &str, out: &Path, force: bool, options: &ExportOptions) -> Result<ExportReport> {
    let model = ModelFiles::resolve(model)?;
    kd_export::check(&model, options)?;
    kd_train::RunDir::replace_whole(out, force, |staging| {
        kd_export::export(&model, staging, options)
    })
}
