//! `kd heads`: which attention heads matter, and the scores that `kd prune` ranks heads and
//! feed-forward neurons by.
//! A head's importance is the dev metric with it masked out (and with it alone in its layer),
//! and Michel et al.'s score (2019): the mean absolute gradient of the loss with respect to a
//! mask variable on the head, normalised per layer.

use crate::charts;
use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use clap::Args;
use kd_bert::Mode;
use kd_data::{DataSpec, EncodedExample, TaskSpec, batch_plan, collate};
use kd_runner::options::{DeviceArg, dev_examples};
use kd_teacher::{ModelFiles, TaskModel, task_loss};
use kd_train::{Progress, RunDir};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model and task to score heads on, and where to write the scores and charts.
#[derive(Args)]
pub struct HeadsArgs {
    /// A task model (with a task head): hub id or directory.
    #[arg(long, required_unless_present = "redraw")]
    model: Option<String>,
    /// Where to write heads.json and the heatmaps (refused when not empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Also prune step by step, 10% of the heads a step by the lowest gradient scores,
    /// re-scored after each step (Michel et al.), and write the dev metric and the batch-1
    /// latency against the share of heads pruned (curve.json, curve.png/svg).
    #[arg(long)]
    curve: bool,
    /// Draw the charts again from the heads.json (and curve.json) in --out, scoring nothing.
    #[arg(long)]
    redraw: bool,
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArg,
    /// The task, scored on its dev file (--dev names another TSV).
    #[command(flatten, next_help_heading = "Data")]
    data: DataSpec,
}

/// A layers x heads matrix indexed by the original head numbers; `None` for a pruned head.
pub(crate) type Matrix = Vec<Vec<Option<f64>>>;

/// What `kd heads` writes to `heads.json`.
#[derive(Serialize, Deserialize)]
struct HeadScores {
    model: String,
    task: String,
    metric: String,
    examples: usize,
    /// The dev metric with every head.
    baseline: f64,
    /// The dev metric with each head masked out (the `heads-masked` heatmap draws
    /// `baseline - masked` in points: what masking the head loses).
    masked: Matrix,
    /// The dev metric with each head the only one left in its layer.
    alone: Matrix,
    /// Michel et al.'s importance: mean |d loss / d mask| over the examples, divided by its
    /// layer's L2 norm.
    gradient: Matrix,
    seconds: f64,
}

/// Scores every head of `--model` on the task's dev set into `heads.json` and heatmaps (with
/// `--curve`, the pruning curve into `curve.json` and its chart too) and prints the scores as
/// JSON; with `--redraw`, only draws the charts again from `--out`.
pub fn run_heads(args: HeadsArgs) -> Result<()> {
    if args.redraw {
        let read = |name: &str| std::fs::read_to_string(args.out.join(name));
        let scores: HeadScores = serde_json::from_str(
            &read("heads.json")
                .with_context(|| format!("no heads.json in {}", args.out.display()))?,
        )?;
        let curve: Option<Vec<CurvePoint>> = read("curve.json")
            .ok()
            .map(|text| serde_json::from_str(&text))
            .transpose()?;
        let charts = draw(&args.out, &scores, curve.as_deref())?;
        eprintln!("redrawn: {}", describe(&charts));
        return Ok(());
    }
    let started = Instant::now();
    args.data.ensure_no_training_options("kd heads")?;
    let name = args
        .model
        .as_deref()
        .context("--model names the model to score")?;
    let files = ModelFiles::resolve(name)?;
    let model = TaskModel::load(&files, args.data.max_seq_len, &args.device.select()?)?;
    let (spec, _, dev) = dev_examples(&model, name, &args.data)?;
    let out = RunDir::create(&args.out, args.force)?;
    let (baseline, masked, alone) = mask_scores(&model, &spec, &dev, args.batch_size)?;
    let (gradient, _) = gradient_scores(&model, &spec, &dev, args.batch_size, false)?;
    let mut scores = HeadScores {
        model: name.to_string(),
        task: spec.name.clone(),
        metric: spec.metrics[0].name().to_string(),
        examples: dev.len(),
        baseline,
        masked,
        alone,
        gradient,
        seconds: 0.0,
    };
    let curve = match args.curve {
        true => Some(pruning_curve(&model, &spec, &dev, args.batch_size)?),
        false => None,
    };
    scores.seconds = started.elapsed().as_secs_f64();
    kd_bert::write_json_atomically(&out.join("heads.json"), &scores)?;
    if let Some(curve) = &curve {
        kd_bert::write_json_atomically(&out.join("curve.json"), curve)?;
    }
    let charts = draw(out.path(), &scores, curve.as_deref())?;
    println!("{}", serde_json::to_string(&scores)?);
    eprintln!(
        "head scores in {} ({}), {:.0} s",
        out.join("heads.json").display(),
        describe(&charts),
        scores.seconds
    );
    Ok(())
}

pub(crate) fn describe(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// The heatmaps of `scores` and the chart of `curve` in `out`.
fn draw(out: &Path, scores: &HeadScores, curve: Option<&[CurvePoint]>) -> Result<Vec<PathBuf>> {
    // Metrics drawn in points (x 100).
    let points = |matrix: &Matrix| -> Matrix {
        let row = |row: &Vec<Option<f64>>| row.iter().map(|v| v.map(|v| v * 100.0)).collect();
        matrix.iter().map(row).collect()
    };
    let axes = charts::HeatmapAxes {
        columns: "head",
        rows: "layer",
        row_labels: &[],
        values: true,
    };
    // The caption says which end of the colour scale (white lowest, dark blue highest) the
    // important heads are at.
    let heatmap = |name: &str, title: &str, caption: &str, matrix: Matrix| {
        charts::heatmaps(
            &out.join(name),
            title,
            &axes,
            &[(caption.to_string(), matrix)],
        )
    };
    let (metric, baseline) = (&scores.metric, scores.baseline);
    let mut charts = heatmap(
        "heads-masked",
        &format!(
            "{metric} points lost with the head masked out (all heads: {:.2})",
            baseline * 100.0
        ),
        "all heads minus masked: dark blue loses most (important); below 0, masking helped",
        points(&drops(baseline, &scores.masked)),
    )?;
    charts.extend(heatmap(
        "heads-alone",
        &format!("{metric} (x 100) with the head alone in its layer"),
        "dark blue: the best alone (important)",
        points(&scores.alone),
    )?);
    charts.extend(heatmap(
        "heads-gradient",
        "gradient importance (Michel et al.), normalised per layer",
        "dark blue: the most important",
        scores.gradient.clone(),
    )?);
    if let Some(points) = curve {
        let series = |value: fn(&CurvePoint) -> f64| {
            points.iter().map(|p| (p.pruned_share, value(p))).collect()
        };
        charts.extend(charts::panels(
            &out.join("curve"),
            "pruning heads by gradient importance, re-scored each step",
            "share of heads pruned",
            &[
                (
                    format!("dev {metric}"),
                    vec![(metric.clone(), series(|p| p.metric))],
                ),
                (
                    "batch-1 latency (ms), median".into(),
                    vec![("p50".into(), series(|p| p.latency_ms))],
                ),
            ],
        )?);
    }
    Ok(charts)
}

/// The metric each head's masking loses, from the metric with every head.
pub(crate) fn drops(baseline: f64, masked: &Matrix) -> Matrix {
    masked
        .iter()
        .map(|row| row.iter().map(|v| v.map(|v| baseline - v)).collect())
        .collect()
}

/// One point of the pruning curve.
#[derive(Serialize, Deserialize)]
struct CurvePoint {
    pruned_share: f64,
    heads: usize,
    metric: f64,
    /// The median time of one dev sentence at batch 1 (the first [`LATENCY_EXAMPLES`]),
    /// model frozen for inference as `kd eval` runs it.
    latency_ms: f64,
    pruned_heads: BTreeMap<String, Vec<usize>>,
}

const LATENCY_EXAMPLES: usize = 200;

/// Michel et al.'s iterative pruning: each step removes the 10% of the original heads (or
/// what is left of them) with the lowest gradient scores, then scores the rest again, until
/// each layer has one head.
fn pruning_curve(
    model: &TaskModel,
    spec: &TaskSpec,
    dev: &[EncodedExample],
    batch_size: usize,
) -> Result<Vec<CurvePoint>> {
    let config = &model.config;
    let total = config.num_hidden_layers * config.num_attention_heads;
    let step = total.div_ceil(10);
    let metric = spec.metrics[0].name();
    let mut current = model.prune_heads(&BTreeMap::new())?;
    let mut points = Vec::new();
    loop {
        let heads: usize = (0..config.num_hidden_layers)
            .map(|layer| current.config.heads_in_layer(layer))
            .sum();
        let mut frozen = current.prune_heads(&BTreeMap::new())?;
        frozen.model.freeze(kd_bert::FrozenWeights::F32)?;
        let point = CurvePoint {
            pruned_share: 1.0 - heads as f64 / total as f64,
            heads,
            metric: frozen.evaluate(spec, dev, batch_size)?[metric],
            latency_ms: median_latency_ms(&frozen, &dev[..dev.len().min(LATENCY_EXAMPLES)])?,
            pruned_heads: current.config.pruned_heads.clone(),
        };
        eprintln!(
            "{} heads: {metric} {:.4}, {:.2} ms a sentence",
            point.heads, point.metric, point.latency_ms
        );
        points.push(point);
        let (scores, _) = gradient_scores(&current, spec, dev, batch_size, false)?;
        let remove = least_important(&current.config, &scores, heads.saturating_sub(step));
        if remove.is_empty() {
            return Ok(points);
        }
        current = current.prune_heads(&remove)?;
    }
}

/// The median time `model` takes to answer one example at a time.
fn median_latency_ms(model: &TaskModel, examples: &[EncodedExample]) -> Result<f64> {
    let mut times = Vec::with_capacity(examples.len());
    for index in 0..examples.len() {
        let batch = collate(examples, &[index], model.params.device())?;
        let started = Instant::now();
        model
            .model
            .logits(&batch.input, None, Mode::Inference)?
            .to_vec2::<f32>()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied().unwrap_or(f64::NAN))
}

/// The heads to remove so that `keep` of the model's heads stay: the lowest `scores` first,
/// skipping a head that is the last of its layer.
pub(crate) fn least_important(
    config: &kd_bert::BertConfig,
    scores: &Matrix,
    keep: usize,
) -> BTreeMap<usize, BTreeSet<usize>> {
    let mut ranked: Vec<(f64, usize, usize)> = scores
        .iter()
        .enumerate()
        .flat_map(|(layer, row)| {
            row.iter()
                .enumerate()
                .filter_map(move |(head, score)| Some((score.as_ref().copied()?, layer, head)))
        })
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut left: Vec<usize> = (0..config.num_hidden_layers)
        .map(|layer| config.heads_in_layer(layer))
        .collect();
    let target = ranked.len().saturating_sub(keep);
    let mut remove: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut removed = 0;
    for (_, layer, head) in ranked {
        if removed == target {
            break;
        }
        // A layer's last head stays.
        if left[layer] > 1 {
            left[layer] -= 1;
            remove.entry(layer).or_default().insert(head);
            removed += 1;
        }
    }
    remove
}

/// The heads to remove so that each layer keeps its `count` highest-scoring ones.
pub(crate) fn outside_top(scores: &Matrix, count: usize) -> BTreeMap<usize, BTreeSet<usize>> {
    scores
        .iter()
        .enumerate()
        .map(|(layer, row)| {
            let present = || {
                row.iter()
                    .enumerate()
                    .filter_map(|(head, score)| Some((head, (*score)?)))
            };
            let kept = top(present(), count);
            let removed = present()
                .map(|(head, _)| head)
                .filter(|head| !kept.contains(head))
                .collect();
            (layer, removed)
        })
        .filter(|(_, removed): &(usize, BTreeSet<usize>)| !removed.is_empty())
        .collect()
}

/// The indices of the `count` highest of `scores` (index, score); ties go to the lower index.
pub(crate) fn top(scores: impl Iterator<Item = (usize, f64)>, count: usize) -> BTreeSet<usize> {
    let mut ranked: Vec<(usize, f64)> = scores.collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(count).map(|(i, _)| i).collect()
}

/// One mask tensor a layer, each head scaled by `value(layer, position)`.
pub(crate) fn head_mask(
    model: &TaskModel,
    value: impl Fn(usize, usize) -> f32,
) -> Result<Vec<Tensor>> {
    (0..model.config.num_hidden_layers)
        .map(|layer| {
            let values: Vec<f32> = (0..model.config.heads_in_layer(layer))
                .map(|position| value(layer, position))
                .collect();
            Ok(Tensor::new(values, model.params.device())?)
        })
        .collect()
}

/// An empty matrix for the model's layers and original heads.
pub(crate) fn empty_matrix(model: &TaskModel) -> Matrix {
    let config = &model.config;
    vec![vec![None; config.num_attention_heads]; config.num_hidden_layers]
}

/// The dev metric with every head, and the matrices with each head masked out and with each
/// head alone in its layer.
pub(crate) fn mask_scores(
    model: &TaskModel,
    spec: &TaskSpec,
    dev: &[EncodedExample],
    batch_size: usize,
) -> Result<(f64, Matrix, Matrix)> {
    let metric = spec.metrics[0].name();
    let score = |mask: &[Tensor]| -> Result<f64> {
        let metrics = model.evaluate_masked(spec, dev, batch_size, Some(mask))?;
        metrics.get(metric).copied().context("no metric")
    };
    let baseline = model.evaluate(spec, dev, batch_size)?[metric];
    let (mut masked, mut alone) = (empty_matrix(model), empty_matrix(model));
    let layers = model.config.num_hidden_layers;
    let total: usize = (0..layers).map(|l| model.config.heads_in_layer(l)).sum();
    let progress = Progress::new(2 * total as u64, "heads");
    for layer in 0..layers {
        let remaining = model.config.remaining_heads(layer);
        for (position, &head) in remaining.iter().enumerate() {
            let without = head_mask(model, |l, p| f32::from(l != layer || p != position))?;
            masked[layer][head] = Some(score(&without)?);
            progress.step(String::new());
            alone[layer][head] = Some(match remaining.len() {
                1 => baseline,
                _ => score(&head_mask(model, |l, p| {
                    f32::from(l != layer || p == position)
                })?)?,
            });
            progress.step(String::new());
        }
    }
    progress.finish();
    Ok((baseline, masked, alone))
}

/// Michel et al.'s importance: the mean over `dev` of |d loss / d mask| for each head's mask
/// variable (all ones), each layer's scores divided by their L2 norm; with `neurons`, also
/// each feed-forward neuron's (a mask variable on its activation), the mean over `dev`, one
/// list a layer (empty otherwise).
pub(crate) fn gradient_scores(
    model: &TaskModel,
    spec: &TaskSpec,
    dev: &[EncodedExample],
    batch_size: usize,
    neurons: bool,
) -> Result<(Matrix, Vec<Vec<f64>>)> {
    let device = model.params.device();
    let ones = |size: usize| Var::ones(size, candle_core::DType::F32, device);
    let layers = model.config.num_hidden_layers;
    let variables: Vec<Var> = (0..layers)
        .map(|layer| ones(model.config.heads_in_layer(layer)))
        .collect::<candle_core::Result<_>>()?;
    let neuron_variables: Vec<Var> = match neurons {
        true => (0..layers)
            .map(|_| ones(model.config.intermediate_size))
            .collect::<candle_core::Result<_>>()?,
        false => Vec::new(),
    };
    let tensors =
        |vars: &[Var]| -> Vec<Tensor> { vars.iter().map(|v| v.as_tensor().clone()).collect() };
    let (mask, neuron_mask) = (tensors(&variables), tensors(&neuron_variables));
    let masks = kd_bert::Masks {
        heads: Some(&mask),
        neurons: neurons.then_some(&neuron_mask[..]),
    };
    let zeros = |vars: &[Var]| -> Vec<Vec<f64>> {
        vars.iter().map(|v| vec![0.0; v.elem_count()]).collect()
    };
    let (mut sums, mut neuron_sums) = (zeros(&variables), zeros(&neuron_variables));
    let lengths: Vec<usize> = dev.iter().map(|e| e.ids.len()).collect();
    let plan = batch_plan(&lengths, batch_size, None::<&mut rand::rngs::StdRng>);
    let progress = Progress::new(plan.len() as u64, "gradients");
    for indices in plan {
        let batch = collate(dev, &indices, device)?;
        let logits =
            model
                .model
                .logits_masked(&batch.input, masks, Mode::Train { dropout: false })?;
        // The batch's mean loss, times its size: per-example gradients summed.
        let loss = (task_loss(spec.kind, &logits, &batch.labels)? * indices.len() as f64)?;
        let grads = loss.backward()?;
        for (sums, variables, what) in [
            (&mut sums, &variables, "a head"),
            (&mut neuron_sums, &neuron_variables, "a neuron"),
        ] {
            for (sum, variable) in sums.iter_mut().zip(variables) {
                let grad = grads
                    .get(variable)
                    .with_context(|| format!("no gradient reached {what} mask"))?;
                for (total, g) in sum.iter_mut().zip(grad.to_vec1::<f32>()?) {
                    *total += g.abs() as f64;
                }
            }
        }
        progress.step(String::new());
    }
    progress.finish();
    let mut scores = empty_matrix(model);
    for (layer, sum) in sums.iter().enumerate() {
        let norm = sum
            .iter()
            .map(|s| s * s)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        for (&head, total) in model.config.remaining_heads(layer).iter().zip(sum) {
            scores[layer][head] = Some(total / norm);
        }
    }
    let examples = dev.len().max(1) as f64;
    for sum in &mut neuron_sums {
        sum.iter_mut().for_each(|total| *total /= examples);
    }
    Ok((scores, neuron_sums))
}
