//! `kd bench --cases latency`: how long a task model takes to answer one sentence, from text
//! to class probabilities (tokenising, the forward pass, the softmax), timed on every dev
//! sentence at batch 1 with the model loaded once; beside it, `benches/pytorch_latency.py`
//! times PyTorch eager and ONNX Runtime (the model exported by `torch.onnx`) on the same
//! sentences.

use crate::args::shared_dir;
use crate::bench_args::BenchArgs;
use crate::child::{kd_child, peak_rss_mb, run_child};
use anyhow::{Context, Result, bail};
use kd_bert::{DeviceName, Mode};
use kd_data::{DataSpec, Example, collate};
use kd_teacher::{ModelFiles, TaskModel};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Sentences answered before timing starts (thread pools, caches and allocator warm up).
pub(crate) const WARMUP: usize = 16;

/// One runtime's latencies for one model, as kd and the Python script print them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub(crate) model: String,
    pub(crate) runtime: String,
    pub(crate) sentences: usize,
    pub(crate) mean_tokens: f64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) peak_rss_mb: f64,
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
            peak_rss_mb: peak_rss_mb(),
        }
    }
}

/// Times every `--model` in a fresh process of its own (and in PyTorch and ONNX Runtime with
/// `--pytorch`), prints the table and returns its rows.
pub fn run(args: &BenchArgs) -> Result<Vec<serde_json::Value>> {
    if args.models.is_empty() {
        bail!("the latency case needs task models: give --model DIR (repeatable)");
    }
    let examples = dev_examples(args)?;
    let sentences = std::env::temp_dir().join(format!("kd-latency-{}.jsonl", std::process::id()));
    let mut rows = Vec::new();
    println!(
        "{:<40} {:<12} {:>7} {:>9} {:>9} {:>9} {:>8}",
        "model", "runtime", "tokens", "mean ms", "p50 ms", "p95 ms", "MB"
    );
    for model in &args.models {
        let device = args.device.name.unwrap_or(DeviceName::Cpu);
        let mut results = vec![in_child(model, &args.data, args.threads, device)?];
        if let Some(python) = &args.pytorch {
            write_sentences(&sentences, &examples)?;
            results.extend(run_python(python, model, &sentences, args)?);
        }
        for result in results {
            println!(
                "{:<40} {:<12} {:>7.1} {:>9.2} {:>9.2} {:>9.2} {:>8.0}",
                result.model,
                result.runtime,
                result.mean_tokens,
                result.mean_ms,
                result.p50_ms,
                result.p95_ms,
                result.peak_rss_mb
            );
            rows.push(serde_json::to_value(result)?);
        }
    }
    let _ = std::fs::remove_file(&sentences);
    Ok(rows)
}

/// Times `model` on the dev sentences of `data` in a fresh process of its own, whose peak
/// memory is then the model's alone.
pub fn in_child(
    model: &str,
    data: &DataSpec,
    threads: usize,
    device: DeviceName,
) -> Result<Latency> {
    let mut flags = child_flags(model, data);
    flags.push(format!("--device={device}"));
    run_child(kd_child(flags, threads)?)
}

/// Times `model` on the dev sentences in this process.
pub fn measure(model: &str, args: &BenchArgs) -> Result<Latency> {
    let examples = dev_examples(args)?;
    let model_files = ModelFiles::resolve(model)?;
    let device = args.device.name.unwrap_or(DeviceName::Cpu).open()?;
    let task_model = TaskModel::load_for_inference(&model_files, args.data.max_seq_len, &device)?;
    let answer = |example: &Example| -> Result<usize> {
        let encoded = task_model.encode(std::slice::from_ref(example))?;
        let batch = collate(&encoded, &[0], &device)?;
        let logits = task_model
            .model
            .logits(&batch.input, None, Mode::Inference)?;
        let logits = logits.squeeze(0)?.to_vec1::<f32>()?;
        std::hint::black_box(crate::predict::softmax(&logits));
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

/// The dev set's texts (labels are not needed: any label is read as a placeholder).
fn dev_examples(args: &BenchArgs) -> Result<Vec<Example>> {
    args.data.ensure_no_training_options("kd bench")?;
    let spec = args.data.task_spec()?;
    let path = args.data.dev_path(&shared_dir())?;
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
pub(crate) fn write_sentences(path: &Path, examples: &[Example]) -> Result<()> {
    let lines: Vec<String> = examples
        .iter()
        .map(|e| serde_json::to_string(&(&e.text, &e.pair)))
        .collect::<Result<_, _>>()?;
    std::fs::write(path, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// PyTorch eager and ONNX Runtime on the same model and sentences.
fn run_python(
    python: &Path,
    model: &str,
    sentences: &Path,
    args: &BenchArgs,
) -> Result<Vec<Latency>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/pytorch_latency.py");
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
            .arg(format!("--threads={}", args.threads))
            .arg(format!("--warmup={WARMUP}"))
            .arg(format!("--max-seq-len={}", args.data.max_seq_len));
        results.push(run_child(command)?);
    }
    Ok(results)
}
