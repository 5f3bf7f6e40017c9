//! `kd bench --cases latency`: how long a task model takes to answer one sentence, from text
//! to class probabilities (tokenising, the forward pass, the softmax), timed on every dev
//! sentence at batch 1 with the model loaded once; beside it, `benches/pytorch_latency.py`
//! times PyTorch eager and ONNX Runtime (the model exported by `torch.onnx`) on the same
//! sentences.

use crate::child::{kd_child, peak_rss_mb, run_child};
use anyhow::{Context, Result, bail};
use kd_bert::{DeviceName, Mode};
use kd_data::{DataSpec, Example, collate};
use kd_runner::options::shared_dir;
use kd_teacher::{ModelFiles, TaskModel};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Sentences answered before timing starts (thread pools, caches and allocator warm up).
pub const WARMUP: usize = 16;

/// One runtime's latencies for one model, as kd and the Python script print them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    /// The model as given: hub id or directory.
    pub model: String,
    /// `kd`, `pytorch` or `onnxruntime`.
    pub runtime: String,
    /// Dev sentences timed, each once, after the warm-up.
    pub sentences: usize,
    /// Tokens a sentence on average, special tokens included.
    pub mean_tokens: f64,
    /// The mean time to answer a sentence, text to probabilities, in milliseconds.
    pub mean_ms: f64,
    /// The median time, in milliseconds.
    pub p50_ms: f64,
    /// The 95th percentile, in milliseconds.
    pub p95_ms: f64,
    /// The measuring process's peak resident memory, in MiB; `None` when the model was timed in
    /// a process that holds more than it (a Python caller's, with the other models compared).
    pub peak_rss_mb: Option<f64>,
}

impl Latency {
    fn new(model: &str, runtime: &str, times_ms: &mut [f64], tokens: usize) -> Self {
        times_ms.sort_by(f64::total_cmp);
        let n = times_ms.len();
        let quantile = |q: f64| times_ms[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
        Self {
            model: model.to_string(),
            runtime: runtime.to_string(),
            sentences: n,
            mean_tokens: tokens as f64 / n as f64,
            mean_ms: times_ms.iter().sum::<f64>() / n as f64,
            p50_ms: quantile(0.5),
            p95_ms: quantile(0.95),
            peak_rss_mb: Some(peak_rss_mb()),
        }
    }
}

/// Times `model` on the dev sentences of `data` in a fresh kd process of its own, whose peak
/// memory is then the model's alone; in this process (on its threads, with its peak memory)
/// when there is no kd program to start (`child::kd_program`).
pub fn in_child(
    model: &str,
    data: &DataSpec,
    threads: usize,
    device: DeviceName,
) -> Result<Latency> {
    if crate::child::kd_program().is_none() {
        return Ok(Latency {
            peak_rss_mb: None,
            ..measure(model, data, device)?
        });
    }
    let mut flags = child_flags(model, data);
    flags.push(format!("--device={device}"));
    run_child(kd_child(flags, threads)?)
}

/// Times `model` on the dev sentences of `data` in this process.
pub fn measure(model: &str, data: &DataSpec, device: DeviceName) -> Result<Latency> {
    let examples = dev_sentences(data, "kd bench")?;
    let device = device.open()?;
    let task_model = TaskModel::open(model, data.max_seq_len, &device)?;
    let answer = |example: &Example| -> Result<usize> {
        let encoded = task_model.encode(std::slice::from_ref(example))?;
        let batch = collate(&encoded, &[0], &device)?;
        let logits = task_model
            .model
            .logits(&batch.input, None, Mode::Inference)?;
        let logits = logits.squeeze(0)?.to_vec1::<f32>()?;
        std::hint::black_box(kd_runner::predict::softmax(&logits));
        Ok(encoded[0].ids.len())
    };
    kd_bert::with_busy_workers(|| {
        for example in examples.iter().cycle().take(WARMUP) {
            answer(example)?;
        }
        let mut times_ms = Vec::with_capacity(examples.len());
        let mut tokens = 0;
        for example in &examples {
            let start = Instant::now();
            tokens += answer(example)?;
            times_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(Latency::new(model, "kd", &mut times_ms, tokens))
    })
}

/// The dev set's texts, for `command` (labels are not needed: any label is read as a
/// placeholder).
pub fn dev_sentences(data: &DataSpec, command: &str) -> Result<Vec<Example>> {
    data.ensure_no_training_options(command)?;
    let spec = data.task_spec()?;
    let path = data.dev_path(&shared_dir())?;
    let examples = spec.read(&path, &mut Vec::new())?;
    if examples.is_empty() {
        bail!("{}: no sentences to time", path.display());
    }
    Ok(examples)
}

/// The child's flags: the latency case, this model, and the data description.
fn child_flags(model: &str, data: &DataSpec) -> Vec<String> {
    let mut flags = vec![
        "--cases=latency".to_string(),
        format!("--model={model}"),
        format!("--max-seq-len={}", data.max_seq_len),
    ];
    let options = [
        ("--task", data.task.clone()),
        ("--dev", data.dev_path(&shared_dir()).ok().map(path_string)),
        ("--text-column", data.text_column.clone()),
        ("--pair-column", data.pair_column.clone()),
        ("--label-column", data.label_column.clone()),
    ];
    for (flag, value) in options {
        if let Some(value) = value {
            flags.push(format!("{flag}={value}"));
        }
    }
    if data.regression {
        flags.push("--regression".into());
    }
    flags
}

fn path_string(path: PathBuf) -> String {
    path.display().to_string()
}

/// Writes the sentences as JSON Lines of `[text, pair]` for the Python script.
pub fn write_sentences(path: &Path, examples: &[Example]) -> Result<()> {
    let lines: Vec<String> = examples
        .iter()
        .map(|e| serde_json::to_string(&(&e.text, &e.pair)))
        .collect::<Result<_, _>>()?;
    std::fs::write(path, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// PyTorch eager and ONNX Runtime on the same model and sentences, on `threads` threads.
pub fn in_python(
    python: &Path,
    model: &str,
    sentences: &Path,
    threads: usize,
    max_seq_len: usize,
) -> Result<Vec<Latency>> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../benches/pytorch_latency.py"
    );
    let model_dir = ModelFiles::resolve(model)?.dir;
    let mut results = Vec::new();
    for runtime in ["pytorch", "onnxruntime"] {
        let mut command = Command::new(python);
        command
            .arg(script)
            .arg(format!("--model={}", model_dir.display()))
            .arg(format!("--name={model}"))
            .arg(format!("--sentences={}", sentences.display()))
            .arg(format!("--runtime={runtime}"))
            .arg(format!("--threads={threads}"))
            .arg(format!("--warmup={WARMUP}"))
            .arg(format!("--max-seq-len={max_seq_len}"));
        results.push(run_child(command)?);
    }
    Ok(results)
}
