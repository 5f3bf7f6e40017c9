//! Output directories (with what each run was made from) and progress reporting for long
//! runs.

use anyhow::{Context, Result, bail};
use indicatif::{FormattedDuration, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A run's output directory. Creating one refuses a non-empty directory unless `force` is set,
/// so that no earlier result is overwritten silently. Under data parallelism rank 0 creates and
/// checks it while the other ranks wait, then take its path.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// A run's directory, checked against what the run is made from: created (and
    /// `inputs` recorded) for a new run, or, with `resume`, opened and refused when `inputs`
    /// differ from those recorded when the run began.
    pub fn for_run(path: &Path, force: bool, resume: bool, inputs: &RunInputs) -> Result<Self> {
        refuse_empty(path)?;
        if force && resume {
            bail!(
                "--force starts the run in {} again and --resume continues it: pass one",
                path.display()
            );
        }
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&serde_json::to_string(inputs)?, &mut hasher);
        kd_parallel::world().check_same(
            "their settings or data files",
            std::hash::Hasher::finish(&hasher),
        )?;
        on_leader(path, || Self::checked_for_run(path, force, resume, inputs))
    }

    fn checked_for_run(path: &Path, force: bool, resume: bool, inputs: &RunInputs) -> Result<Self> {
        if force {
            Self::clear_earlier_run(path)?;
        }
        let dir = match resume {
            true => Self::open_here(path)?,
            false => Self::create_here(path, force)?,
        };
        let recorded = dir.join(INPUTS);
        match std::fs::read(&recorded) {
            Ok(bytes) if resume => {
                let then: RunInputs = serde_json::from_slice(&bytes)
                    .with_context(|| format!("malformed {}", recorded.display()))?;
                let changes = then.changes(inputs);
                if !changes.is_empty() {
                    bail!(
                        "cannot resume the run in {}: what it is made from changed since it \
                         began:\n  {}\nrestore them, or start the run again with --force",
                        path.display(),
                        changes.join("\n  ")
                    );
                }
                Ok(dir)
            }
            // A new run, or one begun before kd recorded its inputs.
            _ => {
                kd_bert::write_json_atomically(&recorded, inputs)?;
                Ok(dir)
            }
        }
    }

    /// Before a run with `--force`: an earlier run in `path` is removed whole, so that none of
    /// its checkpoints, finished stages or logs can pass for the new run's (a `--resume` after
    /// an interruption would take them up). A non-empty directory that is not a kd run's, or
    /// holds anything a run does not write, is refused: kd deletes only what it wrote.
    fn clear_earlier_run(path: &Path) -> Result<()> {
        if !path.is_dir() {
            return Ok(()); // none yet, or not a directory: create_here says which
        }
        let entries = entries(path)?;
        if entries.is_empty() {
            return Ok(());
        }
        let recorded = std::fs::read(path.join(INPUTS)).ok();
        if recorded
            .and_then(|bytes| serde_json::from_slice::<RunInputs>(&bytes).ok())
            .is_none()
        {
            bail!(
                "output directory {} is not empty and holds no earlier kd run (no {INPUTS} of \
                 kd's): kd replaces only what it wrote; choose another directory or empty it",
                path.display()
            );
        }
        refuse_foreign(path, &entries, Written::Run)?;
        for entry in entries {
            let removed = match entry.is_dir() && !entry.is_symlink() {
                true => std::fs::remove_dir_all(&entry),
                false => std::fs::remove_file(&entry),
            };
            removed
                .with_context(|| format!("cannot remove {} of the earlier run", entry.display()))?;
        }
        Ok(())
    }

    pub fn create(path: &Path, force: bool) -> Result<Self> {
        refuse_empty(path)?;
        on_leader(path, || Self::create_here(path, force))
    }

    fn create_here(path: &Path, force: bool) -> Result<Self> {
        refuse_occupied(path, force)?;
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create output directory {}", path.display()))?;
        Self::writable(path)
    }

    /// Writes a model directory at `path` as a unit: `write` fills a fresh folder beside it,
    /// which then takes `path`'s place. An error leaves nothing behind, and `force` replaces
    /// an earlier model directory whole, so that none of its files (a `model.onnx` beside new
    /// weights) can pass for the new one's. See [`RunDir::check_replaceable`] for what is
    /// refused.
    pub fn replace_whole<T>(
        path: &Path,
        force: bool,
        write: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<T> {
        Self::check_replaceable(path, force)?;
        let absolute = std::path::absolute(path)
            .with_context(|| format!("cannot resolve {}", path.display()))?;
        let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
            bail!("{} cannot be replaced: name a directory", path.display());
        };
        let beside = |role: &str| {
            parent.join(format!(
                ".{}.kd-{role}-{}",
                name.to_string_lossy(),
                std::process::id()
            ))
        };
        let staging = beside("new");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create output directory {}", staging.display()))?;
        let value = match write(&staging) {
            Ok(value) => value,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(error);
            }
        };
        let moved = |from: &Path, to: &Path| {
            std::fs::rename(from, to)
                .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
        };
        if absolute.exists() {
            let earlier = beside("old");
            moved(&absolute, &earlier)?;
            moved(&staging, &absolute)?;
            std::fs::remove_dir_all(&earlier)
                .with_context(|| format!("cannot remove {}", earlier.display()))?;
        } else {
            moved(&staging, &absolute)?;
        }
        Ok(value)
    }

    /// Refuses `path` as the output of [`RunDir::replace_whole`] before any work: a non-empty
    /// directory without `force`; with it, one that is no model directory (no `config.json`)
    /// or holds anything kd does not write in one (a run's checkpoint and log, a user's
    /// files), as kd replaces only what it wrote.
    pub fn check_replaceable(path: &Path, force: bool) -> Result<()> {
        refuse_empty(path)?;
        if refuse_occupied(path, force)? {
            if !path.join(CONFIG).is_file() {
                bail!(
                    "output directory {} is not empty and holds no model (no {CONFIG}): kd \
                     replaces only what it wrote; choose another directory or empty it",
                    path.display()
                );
            }
            refuse_foreign(path, &entries(path)?, Written::Model)?;
        }
        Ok(())
    }

    /// An existing run directory, to resume the run in it.
    pub fn open(path: &Path) -> Result<Self> {
        on_leader(path, || Self::open_here(path))
    }

    fn open_here(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            bail!("cannot resume: {} is not a directory", path.display());
        }
        remove_stale_temporaries(path)?;
        Self::writable(path)
    }

    /// `path`, once a file could be written in it: an unwritable directory is an error before
    /// any work, not after the first epoch.
    fn writable(path: &Path) -> Result<Self> {
        let probe = path.join(PROBE);
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .with_context(|| format!("cannot write in output directory {}", path.display()))?;
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

/// `prepare`'s directory on rank 0; on the other ranks, `path` once rank 0 has prepared it (a
/// rank 0 that fails ends the job instead).
fn on_leader(path: &Path, prepare: impl FnOnce() -> Result<RunDir>) -> Result<RunDir> {
    let world = kd_parallel::world();
    let dir = match world.is_leader() {
        true => prepare()?,
        false => RunDir {
            path: path.to_path_buf(),
        },
    };
    world.barrier();
    Ok(dir)
}

const INPUTS: &str = "inputs.json";
/// The file written and removed to see that a directory is writable.
const PROBE: &str = ".kd-write-test";
/// Refuses `path` when it is not a directory, or one with files in it unless `force`; returns
/// whether it has files in it.
fn refuse_occupied(path: &Path, force: bool) -> Result<bool> {
    if path.exists() && !path.is_dir() {
        bail!(
            "output path {} exists and is not a directory",
            path.display()
        );
    }
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
    Ok(non_empty)
}

/// Refuses an empty path, which would stand for the working directory and its files.
fn refuse_empty(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        bail!("the output directory is an empty path: name a directory");
    }
    Ok(())
}

/// The entries of the directory `path`.
fn entries(path: &Path) -> Result<Vec<PathBuf>> {
    let read = || -> std::io::Result<Vec<PathBuf>> {
        std::fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    };
    read().with_context(|| format!("cannot read {}", path.display()))
}

/// Which kind of directory kd wrote: a model, or a run (a model and how it was trained).
#[derive(Clone, Copy, PartialEq)]
enum Written {
    Model,
    Run,
}

/// What kd writes in a model directory besides the tokenizer's files: config, weights
/// (safetensors or ONNX) and `kd prune`'s record.
const CONFIG: &str = "config.json";
const MODEL_ENTRIES: [&str; 4] = [CONFIG, "model.safetensors", "model.onnx", "prune.json"];
/// What a run writes besides its model: inputs, log, metrics or summary, checkpoint, a
/// multi-task student's heads, `kd report`'s charts.
const RUN_ENTRIES: [&str; 8] = [
    INPUTS,
    "log.jsonl",
    "metrics.json",
    "summary.json",
    "stage.json",
    "checkpoint",
    "tasks",
    "report",
];

/// Whether `entry` of a directory is one kd writes in a directory of kind `written`: the
/// files above, a run's stage folders (`1-distill`), and the temporary files of a write.
fn written_by_kd(entry: &Path, written: Written) -> bool {
    let name = entry
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("");
    let stage = || {
        let digits = name.split_once('-').map_or("", |(digits, _)| digits);
        entry.is_dir() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    };
    is_temporary(name)
        || MODEL_ENTRIES.contains(&name)
        || kd_data::TOKENIZER_FILES.contains(&name)
        || (written == Written::Run && (RUN_ENTRIES.contains(&name) || stage()))
}

/// Refuses to replace `path` when any of its `entries` is one kd does not write in a
/// directory of kind `written`: kd replaces only what it wrote.
fn refuse_foreign(path: &Path, entries: &[PathBuf], written: Written) -> Result<()> {
    let foreign: Vec<String> = entries
        .iter()
        .filter(|entry| !written_by_kd(entry, written))
        .filter_map(|entry| entry.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    if !foreign.is_empty() {
        let what = match written {
            Written::Model => "a model directory",
            Written::Run => "a run",
        };
        bail!(
            "output directory {} holds {}, which kd does not write in {what}: kd replaces only \
             what it wrote; move them away, or choose another directory",
            path.display(),
            foreign.join(", ")
        );
    }
    Ok(())
}

/// The temporary files of an atomic write ([`kd_bert::write_atomically`]'s `.NAME.tmp`, the
/// safetensors writer's `.tmpXXXXXX`) and of the writability probe.
fn is_temporary(name: &str) -> bool {
    name.starts_with(".tmp") || (name.starts_with('.') && name.ends_with(".tmp")) || name == PROBE
}

/// Removes what an atomic write of a killed process left in `dir`: the temporary files of
/// [`kd_bert::write_atomically`] (`.NAME.tmp`) and of the safetensors writer inside it
/// (`.tmpXXXXXX`), whole models' worth of bytes that nothing names or reads.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let stale = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(is_temporary);
        if stale && path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// What a run is made from: its settings (a recipe, or a command's options) and a checksum of
/// every file it reads (data, teachers, the model it starts from). Kept as `inputs.json` in the
/// run's directory, so that `--resume` says what changed instead of mixing two runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInputs {
    settings: serde_json::Value,
    files: BTreeMap<String, String>,
}

impl RunInputs {
    pub fn new(settings: &impl Serialize) -> Result<Self> {
        Ok(Self {
            settings: serde_json::to_value(settings)?,
            files: BTreeMap::new(),
        })
    }

    /// Adds `path` with its size and CRC-32.
    pub fn file(&mut self, path: &Path) -> Result<()> {
        let mut hasher = crc32fast::Hasher::new();
        let size = kd_data::for_each_chunk(path, |chunk| hasher.update(chunk))?;
        let fingerprint = format!("{size} bytes, CRC-32 {:08x}", hasher.finalize());
        self.files.insert(path.display().to_string(), fingerprint);
        Ok(())
    }

    /// What differs from `now`, one line each: settings by their dotted name, files by path.
    fn changes(&self, now: &RunInputs) -> Vec<String> {
        let (mut then_settings, mut now_settings) = (BTreeMap::new(), BTreeMap::new());
        flatten("", &self.settings, &mut then_settings);
        flatten("", &now.settings, &mut now_settings);
        let mut changes = Vec::new();
        for (key, then, now) in differences(&then_settings, &now_settings) {
            changes.push(format!("{key}: was {then}, is now {now}"));
        }
        for (path, then, now) in differences(&self.files, &now.files) {
            changes.push(match (then.as_str(), now.as_str()) {
                ("none", _) => format!("{path}: read now, not when the run began"),
                (_, "none") => format!("{path}: read when the run began, not now"),
                _ => format!("{path}: changed ({then} then, {now} now)"),
            });
        }
        changes
    }
}

/// A JSON value's leaves by dotted name (`training.lr`, `stages.0.epochs`).
fn flatten(prefix: &str, value: &serde_json::Value, leaves: &mut BTreeMap<String, String>) {
    let name = |key: &str| match prefix {
        "" => key.to_string(),
        _ => format!("{prefix}.{key}"),
    };
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                flatten(&name(key), value, leaves);
            }
        }
        serde_json::Value::Array(items) => {
            for (index, value) in items.iter().enumerate() {
                flatten(&name(&index.to_string()), value, leaves);
            }
        }
        leaf => {
            leaves.insert(prefix.to_string(), leaf.to_string());
        }
    }
}

/// The keys whose values differ between two maps, with each side's value (`none` if absent).
fn differences(
    then: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<(String, String, String)> {
    let keys: std::collections::BTreeSet<&String> = then.keys().chain(now.keys()).collect();
    let value = |map: &BTreeMap<String, String>, key: &String| {
        map.get(key).cloned().unwrap_or_else(|| "none".into())
    };
    keys.into_iter()
        .filter(|key| then.get(*key) != now.get(*key))
        .map(|key| (key.clone(), value(then, key), value(now, key)))
        .collect()
}

/// Progress of a long loop: a bar with a message (loss, speed) on a terminal; when standard
/// error is not a terminal (a background run writing to a log), one line per 5% instead, with
/// the time taken and the time left.
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
                // As the bar's template shows them: elapsed < estimated time left.
                let (elapsed, left) = (self.bar.elapsed(), self.bar.eta());
                let total = self.bar.length().unwrap_or(0);
                eprintln!(
                    "{} {position}/{total} [{}<{}] {message}",
                    self.prefix,
                    FormattedDuration(elapsed),
                    FormattedDuration(left)
                );
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
    fn a_resume_names_each_changed_setting_and_file() {
        let root = tempfile::tempdir().unwrap();
        let [kept, edited, added] = ["kept", "edited", "added"].map(|name| root.path().join(name));
        for path in [&kept, &edited, &added] {
            std::fs::write(path, b"text").unwrap();
        }
        let settings = |lr: f64| serde_json::json!({ "training": { "lr": lr }, "stages": [1, 2] });
        let mut then = RunInputs::new(&settings(1e-4)).unwrap();
        then.file(&kept).unwrap();
        then.file(&edited).unwrap();
        let out = root.path().join("run");
        RunDir::for_run(&out, false, false, &then).unwrap();
        RunDir::for_run(&out, false, true, &then).unwrap();

        std::fs::write(&edited, b"texts").unwrap();
        let mut now = RunInputs::new(&settings(2e-4)).unwrap();
        for path in [&kept, &edited, &added] {
            now.file(path).unwrap();
        }
        let error = RunDir::for_run(&out, false, true, &now)
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = error.lines().map(str::trim).collect();
        assert_eq!(
            lines[1..4],
            [
                "training.lr: was 0.0001, is now 0.0002".to_string(),
                format!("{}: read now, not when the run began", added.display()),
                format!(
                    "{}: changed (4 bytes, CRC-32 3b8ba7c7 then, 5 bytes, CRC-32 {:08x} now)",
                    edited.display(),
                    crc32fast::hash(b"texts")
                ),
            ],
            "{error}"
        );
        // A new run records the new inputs.
        RunDir::for_run(&out, true, false, &now).unwrap();
        RunDir::for_run(&out, false, true, &now).unwrap();
    }

    /// `--force` replaces an earlier run whole: none of its checkpoints or finished stages is
    /// left for a `--resume` of the new run to take up. A directory kd did not write is kept.
    #[test]
    fn force_removes_an_earlier_run_and_only_a_run() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("run");
        let inputs = RunInputs::new(&serde_json::json!({ "lr": 1e-4 })).unwrap();
        RunDir::for_run(&out, false, false, &inputs).unwrap();
        std::fs::create_dir_all(out.join("checkpoint")).unwrap();
        std::fs::write(out.join("checkpoint/state.json"), b"{}").unwrap();
        std::fs::create_dir_all(out.join("1-distill")).unwrap();
        std::fs::write(out.join("1-distill/stage.json"), b"{}").unwrap();
        RunDir::for_run(&out, true, false, &inputs).unwrap();
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [INPUTS], "only the new run's record");

        let other = root.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), b"mine").unwrap();
        let error = RunDir::for_run(&other, true, false, &inputs)
            .unwrap_err()
            .to_string();
        assert!(error.contains("holds no earlier kd run"), "{error}");
        assert!(other.join("notes.txt").exists());
        // A stray log is no run; a run with a user's files in it is not cleared either.
        std::fs::write(other.join("log.jsonl"), b"{}").unwrap();
        let error = RunDir::for_run(&other, true, false, &inputs).unwrap_err();
        assert!(error.to_string().contains("holds no earlier kd run"));
        std::fs::write(out.join("README.md"), b"mine").unwrap();
        std::fs::create_dir_all(out.join("src")).unwrap();
        let error = RunDir::for_run(&out, true, false, &inputs)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("holds README.md, src, which kd does not write in a run")
                || error.contains("holds src, README.md, which kd does not write in a run"),
            "{error}"
        );
        assert!(out.join(INPUTS).exists() && out.join("README.md").exists());

        let error = RunDir::for_run(&out, true, true, &inputs).unwrap_err();
        assert!(error.to_string().contains("pass one"), "{error}");
        let error = RunDir::for_run(Path::new(""), false, false, &inputs).unwrap_err();
        assert!(error.to_string().contains("empty path"), "{error}");
    }

    /// A model directory is written whole: a failed write leaves nothing (and an earlier
    /// directory as it was), a forced one replaces every file of the earlier one, and a
    /// directory that holds no model is refused.
    #[test]
    fn a_model_directory_is_replaced_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("export");
        let write = |files: &'static [&'static str]| {
            move |dir: &Path| -> Result<()> {
                for file in files {
                    std::fs::write(dir.join(file), file)?;
                }
                Ok(())
            }
        };
        let failed = RunDir::replace_whole(&out, false, |dir| -> Result<()> {
            write(&["config.json"])(dir)?;
            bail!("graph failed")
        });
        assert!(failed.is_err() && !out.exists());
        RunDir::replace_whole(&out, false, write(&["config.json", "model.onnx"])).unwrap();
        let refused = RunDir::replace_whole(&out, false, write(&["config.json"]));
        assert!(refused.unwrap_err().to_string().contains("--force"));
        RunDir::replace_whole(&out, true, write(&["config.json", "model.safetensors"])).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["config.json", "model.safetensors"]);
        let leftovers = std::fs::read_dir(root.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no staging or earlier folder left beside it");

        let other = root.path().join("notes");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), b"mine").unwrap();
        let refused = RunDir::replace_whole(&other, true, write(&["config.json"]));
        assert!(refused.unwrap_err().to_string().contains("holds no model"));
        assert!(other.join("notes.txt").exists());
        // Nor is a model directory replaced with a user's files in it, or a run's (its
        // checkpoint and log would be lost), or the working directory.
        for foreign in ["README.md", "checkpoint", "log.jsonl"] {
            std::fs::write(out.join(foreign), b"x").unwrap();
            let refused = RunDir::replace_whole(&out, true, write(&["config.json"]));
            let error = refused.unwrap_err().to_string();
            assert!(
                error.contains(&format!("holds {foreign}, which kd does not write")),
                "{error}"
            );
            std::fs::remove_file(out.join(foreign)).unwrap();
        }
        let refused = RunDir::replace_whole(Path::new(""), true, write(&["config.json"]));
        assert!(refused.unwrap_err().to_string().contains("empty path"));
    }

    #[test]
    fn a_resume_removes_what_a_killed_write_left() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("run");
        std::fs::create_dir_all(&out).unwrap();
        for stale in [".tmpAb12Cd", ".model.safetensors.tmp"] {
            std::fs::write(out.join(stale), b"partial").unwrap();
        }
        std::fs::write(out.join("model.safetensors"), b"whole").unwrap();
        RunDir::open(&out).unwrap();
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["model.safetensors"]);
    }

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
