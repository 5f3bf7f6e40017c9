//! `kd compare`: models side by side on the same dev examples against a reference (the
//! teacher): the task metric with a bootstrap interval, agreement, KL and McNemar's test
//! against the reference, size, batch-1 latency, batch-32 throughput and peak memory. ONNX
//! exports (`kd export --format onnx`) run in ONNX Runtime, through `benches/onnx_answers.py`.

use crate::charts;
use anyhow::{Context, Result, bail};
use candle_core::{D, Device, Tensor};
use clap::Args;
use kd_bert::{BertConfig, ProblemType};
use kd_data::{
    DataSpec, Example, Label, McNemar, Predictions, agreement, bootstrap_interval, evaluate,
    mcnemar,
};
use kd_runner::options::{DeviceArg, shared_dir};
use kd_teacher::{ModelFiles, TaskModel};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const THROUGHPUT_BATCH: usize = 32;
const INTERVAL_LEVEL: f64 = 0.95;

/// The models to compare, the reference, the task, and where to write the comparison.
#[derive(Args)]
pub struct CompareArgs {
    /// The models (directories or hub ids); the first is the reference unless --teacher.
    #[arg(long, num_args = 1.., required = true)]
    pub models: Vec<String>,
    /// The reference model, usually the teacher [default: the first of --models].
    #[arg(long)]
    pub teacher: Option<String>,
    /// The task, whose dev file the models answer.
    #[command(flatten)]
    pub data: DataSpec,
    /// Write compare.md and compare.json into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write into --out even when it is not empty.
    #[arg(long, requires = "out")]
    pub force: bool,
    /// Bootstrap resamples for the metric's 95% interval.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Threads for the latency and throughput measurements.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// A Python interpreter with onnxruntime, onnx and tokenizers (benches/setup.sh makes
    /// one), to run the ONNX exports among --models in ONNX Runtime.
    #[arg(long)]
    pub onnx_python: Option<PathBuf>,
    /// Where kd's models run (ONNX exports run on the CPU).
    #[command(flatten)]
    pub device: DeviceArg,
}

/// One model's row.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The model as given: hub id or directory.
    pub model: String,
    /// `kd`, or `onnxruntime` for an ONNX export.
    pub runtime: String,
    /// The name of the task's first metric.
    pub metric: String,
    /// That metric on the dev examples, not in percent (0.91 for 91%).
    pub value: f64,
    /// The metric's 95% bootstrap interval: (low, high).
    pub interval: (f64, f64),
    /// The share of examples on which the model's class is the reference's (classification
    /// only).
    pub agreement: Option<f64>,
    /// The mean KL(reference ‖ model) of the class probabilities, in nats (classification
    /// only).
    pub kl_to_reference: Option<f64>,
    /// McNemar's test on the examples only one of the model and the reference gets right
    /// (classification only).
    pub mcnemar: Option<McNemar>,
    /// The size of the weights file (`model.safetensors`, or an export's `model.onnx`), in MB
    /// of 10^6 bytes.
    pub weights_mb: f64,
    /// Its parameters and what answering cost it (flattened into the row's JSON).
    #[serde(flatten)]
    pub costs: Costs,
}

/// A model's size in parameters and what answering cost it: batch-1 latency, batch-32
/// throughput, peak memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Costs {
    /// Parameters (of an ONNX export, those its graph stores).
    pub params: usize,
    /// Parameters outside the embedding tables.
    pub params_without_embeddings: usize,
    /// Median time to answer one sentence (batch 1, text to probabilities, after a warm-up), in
    /// milliseconds.
    pub p50_ms: f64,
    /// The 95th percentile of those times, in milliseconds.
    pub p95_ms: f64,
    /// Dev examples answered a second at batch 32, tokenising excluded.
    pub throughput_per_s: f64,
    /// The peak resident memory of the process that timed the model, in MiB; `None` when that
    /// process held more than the model ([`crate::latency::in_child`]).
    pub peak_rss_mb: Option<f64>,
}

/// The fewest bootstrap resamples that leave a 95% interval at least one draw beyond each end.
const MIN_RESAMPLES: usize = 40;

const ONNX_PYTHON_NEEDED: &str = "give --onnx-python PYTHON (an interpreter with onnxruntime, \
     onnx and tokenizers, as benches/setup.sh makes) to run it in ONNX Runtime";

/// What a model answered on the dev examples and what that cost.
struct Measured {
    runtime: &'static str,
    problem_type: ProblemType,
    /// `[examples, outputs]`.
    logits: Tensor,
    weights_mb: f64,
    costs: Costs,
}

/// What a model answered on the dev examples.
struct Answers {
    probabilities: Option<Tensor>,
    predictions: Predictions,
}

/// What `kd compare` found: a row a model (the reference first) and the markdown table.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// One row a model, the reference first (what `compare.json` holds).
    pub rows: Vec<Row>,
    /// The Markdown table (what `compare.md` holds).
    pub table: String,
}

/// Answers the dev examples with every model and compares them with the reference; writes
/// compare.md, compare.json and the charts into `--out` when given.
pub fn run(args: &CompareArgs) -> Result<Comparison> {
    args.data.ensure_no_training_options("kd compare")?;
    if args.bootstrap < MIN_RESAMPLES {
        bail!(
            "--bootstrap {}: too few resamples for a 95% interval; give {MIN_RESAMPLES} or more \
             (1000 by default)",
            args.bootstrap
        );
    }
    let reference_name = args
        .teacher
        .clone()
        .unwrap_or_else(|| args.models[0].clone());
    let mut names = vec![reference_name.clone()];
    names.extend(
        args.models
            .iter()
            .filter(|m| **m != reference_name)
            .cloned(),
    );
    let device = args.device.select()?;
    let spec = args.data.task_spec()?;
    let dev_path = args.data.dev_path(&shared_dir())?;
    let (reference_labels, reference_type) = task_head(&reference_name)?;
    let mut labels = kd_teacher::dataset_labels(reference_type, &reference_labels);
    let examples = spec.read(&dev_path, &mut labels)?;
    if examples.is_empty() {
        bail!("{}: no examples to compare on", dev_path.display());
    }
    // Every model answers in the reference's labels: checked before any is timed, and the
    // output directory made only then, so that refused inputs leave nothing behind.
    for name in &names {
        if is_onnx_export(name) && args.onnx_python.is_none() {
            bail!("{name} is an ONNX export: {ONNX_PYTHON_NEEDED}");
        }
        let (labels, _) = task_head(name)?;
        if labels != reference_labels {
            bail!(
                "{name} predicts {labels:?}, the reference {reference_name} {reference_labels:?}"
            );
        }
    }
    let out = args
        .out
        .as_ref()
        .map(|out| kd_train::RunDir::create(out, args.force))
        .transpose()?;
    let gold: Vec<Label> = examples.iter().map(|e| e.label).collect();
    let metric = spec.metrics[0];
    let mut reference_answers: Option<Answers> = None;
    let mut rows = Vec::new();
    for name in &names {
        let measured = if is_onnx_export(name) {
            measure_onnx(name, &examples, args)?
        } else {
            measure_kd(name, &examples, args, &device)?
        };
        let predictions = kd_teacher::predictions(measured.problem_type, &measured.logits)?;
        let answers = Answers {
            probabilities: match predictions {
                Predictions::Classes(_) => Some(kd_bert::ops::softmax_last_dim(&measured.logits)?),
                Predictions::Scores(_) => None,
            },
            predictions,
        };
        let value = evaluate(&[metric], &answers.predictions, &gold)?[metric.name()];
        let interval = bootstrap_interval(
            metric,
            &answers.predictions,
            &gold,
            args.bootstrap,
            INTERVAL_LEVEL,
            0,
        )?;
        let against = reference_answers.as_ref().unwrap_or(&answers);
        let (agreement, kl, test) = against_reference(&answers, against, &gold)?;
        rows.push(Row {
            model: name.clone(),
            runtime: measured.runtime.to_string(),
            metric: metric.name().to_string(),
            value,
            interval,
            agreement,
            kl_to_reference: kl,
            mcnemar: test,
            weights_mb: measured.weights_mb,
            costs: measured.costs,
        });
        if reference_answers.is_none() {
            reference_answers = Some(answers);
        }
    }
    let table = markdown(&rows, &reference_name, examples.len(), &dev_path);
    if let Some(out) = out {
        kd_bert::write_atomically(&out.join("compare.md"), |tmp| {
            Ok(std::fs::write(tmp, &table)?)
        })?;
        kd_bert::write_json_atomically(&out.join("compare.json"), &rows)?;
        if let Err(error) = draw_charts(&rows, out.path()) {
            eprintln!("charts skipped: {error:#}");
        }
        eprintln!("written to {}", out.path().display());
    }
    Ok(Comparison { rows, table })
}

/// A directory holding an ONNX export rather than a model kd loads.
fn is_onnx_export(name: &str) -> bool {
    let dir = Path::new(name);
    dir.join(kd_export::onnx::ONNX_FILE).is_file() && !dir.join("model.safetensors").exists()
}

/// The labels and problem type of a model's head, from its config.
fn task_head(name: &str) -> Result<(Vec<String>, ProblemType)> {
    let config = if is_onnx_export(name) {
        Path::new(name).join("config.json")
    } else {
        ModelFiles::resolve(name)?.config
    };
    BertConfig::from_file(&config)?
        .task_head()
        .with_context(|| format!("{name} has no task head (no id2label in its config)"))
}

/// A model kd loads: logits at batch 32 here, latency in a fresh process.
fn measure_kd(
    name: &str,
    examples: &[Example],
    args: &CompareArgs,
    device: &Device,
) -> Result<Measured> {
    let files = ModelFiles::resolve(name)?;
    let model = TaskModel::load_for_inference(&files, args.data.max_seq_len, device)
        .with_context(|| format!("cannot load {name}"))?;
    let encoded = model.encode(examples)?;
    let started = Instant::now();
    let logits = model.logits(&encoded, THROUGHPUT_BATCH, None)?;
    let throughput_per_s = examples.len() as f64 / started.elapsed().as_secs_f64();
    eprintln!("{name}: timing one sentence at a time");
    let device_name = kd_bert::DeviceName::of(device);
    let latency = crate::latency::in_child(name, &args.data, args.threads, device_name)?;
    let vars = model.params.vars();
    Ok(Measured {
        runtime: "kd",
        problem_type: model.problem_type,
        logits,
        weights_mb: std::fs::metadata(&files.weights)?.len() as f64 / 1e6,
        costs: Costs {
            params: model.params.num_parameters(),
            params_without_embeddings: vars
                .iter()
                .filter(|(name, _)| !name.contains("embeddings"))
                .map(|(_, var)| var.elem_count())
                .sum(),
            p50_ms: latency.p50_ms,
            p95_ms: latency.p95_ms,
            throughput_per_s,
            peak_rss_mb: latency.peak_rss_mb,
        },
    })
}

/// What `benches/onnx_answers.py` prints.
#[derive(Deserialize)]
struct OnnxAnswers {
    logits: Vec<Vec<f32>>,
    #[serde(flatten)]
    costs: Costs,
}

/// An ONNX export, run in ONNX Runtime by `--onnx-python` in a process of its own.
fn measure_onnx(name: &str, examples: &[Example], args: &CompareArgs) -> Result<Measured> {
    let Some(python) = &args.onnx_python else {
        bail!("{name} is an ONNX export: {ONNX_PYTHON_NEEDED}");
    };
    let (_, problem_type) = task_head(name)?;
    let sentences = std::env::temp_dir().join(format!("kd-compare-{}.jsonl", std::process::id()));
    crate::latency::write_sentences(&sentences, examples)?;
    eprintln!("{name}: running in ONNX Runtime");
    let mut command = Command::new(python);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../benches/onnx_answers.py"
        ))
        .arg(format!("--model={name}"))
        .arg(format!("--sentences={}", sentences.display()))
        .arg(format!("--threads={}", args.threads))
        .arg(format!("--warmup={}", crate::latency::WARMUP))
        .arg(format!("--batch-size={THROUGHPUT_BATCH}"))
        .arg(format!("--max-seq-len={}", args.data.max_seq_len));
    let answers: Result<OnnxAnswers> = crate::child::run_child(command);
    let _ = std::fs::remove_file(&sentences);
    let answers = answers?;
    let outputs = answers.logits.first().map_or(0, Vec::len);
    let logits = Tensor::from_vec(
        answers.logits.concat(),
        (answers.logits.len(), outputs),
        &candle_core::Device::Cpu,
    )?;
    let onnx_file = Path::new(name).join(kd_export::onnx::ONNX_FILE);
    Ok(Measured {
        runtime: "onnxruntime",
        problem_type,
        logits,
        weights_mb: std::fs::metadata(onnx_file)?.len() as f64 / 1e6,
        costs: answers.costs,
    })
}

/// Agreement, mean KL(reference ‖ model) and McNemar's test, for classifiers.
fn against_reference(
    answers: &Answers,
    reference: &Answers,
    gold: &[Label],
) -> Result<(Option<f64>, Option<f64>, Option<McNemar>)> {
    let (Predictions::Classes(predicted), Predictions::Classes(expected), Some(p), Some(q)) = (
        &answers.predictions,
        &reference.predictions,
        &answers.probabilities,
        &reference.probabilities,
    ) else {
        return Ok((None, None, None));
    };
    let correct = |classes: &[usize]| -> Vec<bool> {
        classes
            .iter()
            .zip(gold)
            .map(|(&c, label)| matches!(label, Label::Class(g) if *g == c))
            .collect()
    };
    // Never below 0 but by rounding, which would print as "-0.00" for identical answers.
    let kl = (q * (q.clamp(1e-12, 1.0)?.log()? - p.clamp(1e-12, 1.0)?.log()?)?)?
        .sum(D::Minus1)?
        .mean_all()?
        .to_scalar::<f32>()?
        .max(0.0) as f64;
    Ok((
        Some(agreement(predicted, expected)),
        Some(kl),
        Some(mcnemar(&correct(predicted), &correct(expected))),
    ))
}

fn markdown(rows: &[Row], reference: &str, examples: usize, data: &std::path::Path) -> String {
    let mut table = format!(
        "{examples} examples of {}; reference {reference}; {:.0}% bootstrap intervals; latency \
         one example at a time, throughput at batch {THROUGHPUT_BATCH}.\n\n\
         | model | {} | 95% interval | agreement | KL to ref. | McNemar (only model / only ref., p) \
         | params | without embeddings | weights MB | p50 ms | p95 ms | examples/s | peak MB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        data.display(),
        INTERVAL_LEVEL * 100.0,
        rows.first().map_or("metric", |row| row.metric.as_str()),
    );
    let optional = |value: Option<f64>, scale: f64| {
        value.map_or("-".to_string(), |v| format!("{:.2}", v * scale))
    };
    for row in rows {
        let model = with_runtime(row.model.clone(), &row.runtime);
        let test = row.mcnemar.map_or("-".to_string(), |t| {
            format!("{} / {}, p = {:.3}", t.only_first, t.only_second, t.p_value)
        });
        table += &format!(
            "| {} | {:.2} | {:.2} to {:.2} | {}% | {} | {} | {:.1}M | {:.1}M | {:.1} | {:.2} | {:.2} | {:.0} | {} |\n",
            model,
            row.value * 100.0,
            row.interval.0 * 100.0,
            row.interval.1 * 100.0,
            optional(row.agreement, 100.0),
            optional(row.kl_to_reference, 1.0),
            test,
            row.costs.params as f64 / 1e6,
            row.costs.params_without_embeddings as f64 / 1e6,
            row.weights_mb,
            row.costs.p50_ms,
            row.costs.p95_ms,
            row.costs.throughput_per_s,
            row.costs
                .peak_rss_mb
                .map_or("-".into(), |mb| format!("{mb:.0}")),
        );
    }
    table
}

/// A model's name, with the runtime that ran it when that is not kd.
fn with_runtime(name: String, runtime: &str) -> String {
    match runtime {
        "kd" => name,
        runtime => format!("{name} ({runtime})"),
    }
}

/// The metric against latency and against size, one labelled point per model.
fn draw_charts(rows: &[Row], out: &Path) -> Result<()> {
    let metric = rows.first().map_or("metric", |row| row.metric.as_str());
    let label = |row: &Row| {
        let name = Path::new(&row.model).file_name();
        let name = name.map_or(row.model.clone(), |n| n.to_string_lossy().into_owned());
        with_runtime(name, &row.runtime)
    };
    let points = |x: fn(&Row) -> f64| -> Vec<(String, f64, f64)> {
        rows.iter()
            .map(|row| (label(row), x(row), row.value * 100.0))
            .collect()
    };
    let y = format!("{metric} (%)");
    charts::scatter(
        &out.join("metric-latency"),
        &format!("{metric} against batch-1 latency"),
        ("p50 latency (ms)", &y),
        &points(|row| row.costs.p50_ms),
    )?;
    charts::scatter(
        &out.join("metric-size"),
        &format!("{metric} against size"),
        ("weights (MB)", &y),
        &points(|row| row.weights_mb),
    )?;
    Ok(())
}
