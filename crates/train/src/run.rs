//! Output directories and progress reporting for long runs.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// A run's output directory. Creating one refuses a non-empty directory unless `force` is set,
/// so that no earlier result is overwritten silently.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        let non_empty = path.is_dir()
            && std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .next()
                .is_some();
        if non_empty && !force {
            bail!(
                "output directory {} is not empty: choose another or pass --force to overwrite it",
                path.display()
            );
        }
        if path.exists() && !path.is_dir() {
            bail!(
                "output path {} exists and is not a directory",
                path.display()
            );
        }
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create output directory {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// An existing run directory, to resume the run in it.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            bail!("cannot resume: {} is not a directory", path.display());
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Progress of a long loop: a bar with a message (loss, speed) on a terminal; when standard
/// error is not a terminal (a background run writing to a log), one line per 5% instead.
pub struct Progress {
    bar: ProgressBar,
    prefix: String,
    log_every: u64,
}

impl Progress {
    pub fn new(total: u64, prefix: &str) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}<{eta_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(prefix.to_string());
        Self {
            bar,
            prefix: prefix.to_string(),
            log_every: (total / 20).max(1),
        }
    }

    /// A counter for a loop of unknown length (lines read from standard input); when standard
    /// error is not a terminal it prints nothing until the caller's own summary.
    pub fn unbounded(prefix: &str) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {pos} {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(prefix.to_string());
        Self {
            bar,
            prefix: prefix.to_string(),
            log_every: u64::MAX,
        }
    }

    /// Starts from `position` (a resumed run).
    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
    }

    /// Advances by one step and shows `message`.
    pub fn step(&self, message: String) {
        self.advance(1, message);
    }

    /// Advances by `count` steps and shows `message`.
    pub fn advance(&self, count: u64, message: String) {
        self.bar.inc(count);
        let position = self.bar.position();
        if self.bar.is_hidden() {
            if position / self.log_every > (position - count) / self.log_every {
                let elapsed = self.bar.elapsed().as_secs();
                let total = self.bar.length().unwrap_or(0);
                eprintln!("{} {position}/{total} [{elapsed}s] {message}", self.prefix);
            }
        } else {
            self.bar.set_message(message);
        }
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_non_empty_directory_without_force() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("run");
        RunDir::create(&out, false).unwrap();
        RunDir::create(&out, false).unwrap(); // empty: fine
        std::fs::write(out.join("model.safetensors"), b"x").unwrap();
        let error = RunDir::create(&out, false).unwrap_err().to_string();
        assert!(
            error.contains("not empty") && error.contains("--force"),
            "{error}"
        );
        RunDir::create(&out, true).unwrap();
        assert!(out.join("model.safetensors").exists());
    }
}
