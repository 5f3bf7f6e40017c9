//! `kd compare`: models side by side on the same dev examples against a reference (the
//! teacher): the task metric with a bootstrap interval, agreement, KL and McNemar's test
//! against the reference, size, batch-1 latency, batch-32 throughput and peak memory.

use crate::charts;
use crate::cli::shared_dir;
use anyhow::{Context, Result, bail};
use candle_core::{D, Tensor};
use clap::Args;
use kd_data::{
    DataSpec, Label, McNemar, Predictions, agreement, bootstrap_interval, evaluate, mcnemar,
};
use kd_teacher::{ModelFiles, TaskModel};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

const THROUGHPUT_BATCH: usize = 32;
const INTERVAL_LEVEL: f64 = 0.95;

#[derive(Args)]
pub struct CompareArgs {
    /// The models (directories or hub ids); the first is the reference unless --teacher.
    #[arg(long, num_args = 1.., required = true)]
    models: Vec<String>,
    /// The reference model, usually the teacher [default: the first of --models].
    #[arg(long)]
    teacher: Option<String>,
    #[command(flatten)]
    data: DataSpec,
    /// Write compare.md and compare.json into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, requires = "out")]
    force: bool,
    /// Bootstrap resamples for the metric's 95% interval.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Threads for the latency and throughput measurements.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// One model's row.
#[derive(Debug, Serialize)]
pub struct Row {
    model: String,
    metric: String,
    value: f64,
    interval: (f64, f64),
    /// Against the reference (classification only).
    agreement: Option<f64>,
    kl_to_reference: Option<f64>,
    mcnemar: Option<McNemar>,
    params: usize,
    params_without_embeddings: usize,
    weights_mb: f64,
    p50_ms: f64,
    p95_ms: f64,
    throughput_per_s: f64,
    peak_rss_mb: f64,
}

/// What a model answered on the dev examples.
struct Answers {
    probabilities: Option<Tensor>,
    predictions: Predictions,
}

pub fn run(args: CompareArgs) -> Result<()> {
    args.data.ensure_no_training_options("kd compare")?;
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
    let out = args
        .out
        .as_ref()
        .map(|out| kd_train::RunDir::create(out, args.force))
        .transpose()?;

    let spec = args.data.task_spec()?;
    let dev_path = args.data.dev_path(&shared_dir())?;
    let reference = load(&reference_name, &args.data)?;
    let mut labels = reference.dataset_labels();
    let examples = spec.read(&dev_path, &mut labels)?;
    if examples.is_empty() {
        bail!("{}: no examples to compare on", dev_path.display());
    }
    let gold: Vec<Label> = examples.iter().map(|e| e.label).collect();
    let metric = spec.metrics[0];
    let mut reference_answers: Option<Answers> = None;
    let mut rows = Vec::new();
    for name in &names {
        let model = load(name, &args.data)?;
        if model.labels != reference.labels {
            bail!(
                "{name} predicts {:?}, the reference {reference_name} {:?}",
                model.labels,
                reference.labels
            );
        }
        let encoded = model.encode(&examples)?;
        let started = Instant::now();
        let logits = model.logits(&encoded, THROUGHPUT_BATCH, None)?;
        let throughput = examples.len() as f64 / started.elapsed().as_secs_f64();
        let predictions = model.predictions(&logits)?;
        let answers = Answers {
            probabilities: match predictions {
                Predictions::Classes(_) => Some(kd_bert::ops::softmax_last_dim(&logits)?),
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
        eprintln!("{name}: timing one sentence at a time");
        let latency = crate::latency::in_child(name, &args.data, args.threads)?;
        let files = ModelFiles::resolve(name)?;
        let vars = model.params.vars();
        rows.push(Row {
            model: name.clone(),
            metric: metric.name().to_string(),
            value,
            interval,
            agreement,
            kl_to_reference: kl,
            mcnemar: test,
            params: model.params.num_parameters(),
            params_without_embeddings: vars
                .iter()
                .filter(|(name, _)| !name.contains("embeddings"))
                .map(|(_, var)| var.elem_count())
                .sum(),
            weights_mb: std::fs::metadata(&files.weights)?.len() as f64 / 1e6,
            p50_ms: latency.p50_ms,
            p95_ms: latency.p95_ms,
            throughput_per_s: throughput,
            peak_rss_mb: latency.peak_rss_mb,
        });
        if reference_answers.is_none() {
            reference_answers = Some(answers);
        }
    }
    let table = markdown(&rows, &reference_name, examples.len(), &dev_path);
    println!("{table}");
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
    Ok(())
}

fn load(name: &str, data: &DataSpec) -> Result<TaskModel> {
    TaskModel::load_for_inference(&ModelFiles::resolve(name)?, data.max_seq_len)
        .with_context(|| format!("cannot load {name}"))
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
    let kl = (q * (q.clamp(1e-12, 1.0)?.log()? - p.clamp(1e-12, 1.0)?.log()?)?)?
        .sum(D::Minus1)?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
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
        let test = row.mcnemar.map_or("-".to_string(), |t| {
            format!("{} / {}, p = {:.3}", t.only_first, t.only_second, t.p_value)
        });
        table += &format!(
            "| {} | {:.2} | {:.2} to {:.2} | {}% | {} | {} | {:.1}M | {:.1}M | {:.1} | {:.2} | {:.2} | {:.0} | {:.0} |\n",
            row.model,
            row.value * 100.0,
            row.interval.0 * 100.0,
            row.interval.1 * 100.0,
            optional(row.agreement, 100.0),
            optional(row.kl_to_reference, 1.0),
            test,
            row.params as f64 / 1e6,
            row.params_without_embeddings as f64 / 1e6,
            row.weights_mb,
            row.p50_ms,
            row.p95_ms,
            row.throughput_per_s,
            row.peak_rss_mb,
        );
    }
    table
}

/// The metric against latency and against size, one labelled point per model.
fn draw_charts(rows: &[Row], out: &Path) -> Result<()> {
    let metric = rows.first().map_or("metric", |row| row.metric.as_str());
    let label = |row: &Row| {
        let name = Path::new(&row.model).file_name();
        name.map_or(row.model.clone(), |n| n.to_string_lossy().into_owned())
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
        &points(|row| row.p50_ms),
    )?;
    charts::scatter(
        &out.join("metric-size"),
        &format!("{metric} against size"),
        ("weights (MB)", &y),
        &points(|row| row.weights_mb),
    )?;
    Ok(())
}
