//! Measurements in fresh processes (`kd bench --child`), each with a peak memory of its own,
//! read back as JSON.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// The `kd` program that runs measurements in child processes: this program when it is kd,
/// else `$KD_BIN` (a library's caller, such as the Python package, is not kd).
pub fn kd_program() -> Option<PathBuf> {
    let this = std::env::current_exe().ok()?;
    if this.file_stem().is_some_and(|stem| stem == "kd") {
        return Some(this);
    }
    std::env::var_os("KD_BIN").map(PathBuf::from)
}

/// `kd bench --child` with `args` after the subcommand's own flags, on `threads` threads.
pub fn kd_child(args: impl IntoIterator<Item = String>, threads: usize) -> Result<Command> {
    let Some(program) = kd_program() else {
        bail!("measuring in a child process needs the kd program: set KD_BIN to its path");
    };
    let mut command = Command::new(program);
    command
        .args(["bench", "--child"])
        .args(args)
        // candle sizes its matmul thread pool from rayon's variable.
        .env("RAYON_NUM_THREADS", threads.to_string());
    Ok(command)
}

/// Runs a child bench and reads the JSON of its last output line.
pub fn run_child<T: serde::de::DeserializeOwned>(mut command: Command) -> Result<T> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("unexpected output of {command:?}: {stdout}"))
}

/// The process's peak resident memory.
pub fn peak_rss_mb() -> f64 {
    // The kernel's high-water mark of this process image: getrusage's `ru_maxrss` would carry
    // the parent's over from before `exec` (a child of `kd compare` reported its parent's).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        });
    if let Some(kb) = peak_kb {
        return kb / 1024.0;
    }
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss as f64 / 1024.0
}
