//! `kd prune`: attention heads (HF's `pruned_heads`) and feed-forward neurons (a smaller
//! `intermediate_size`) removed for good, named or the least important by `kd heads`' scores,
//! in one step or several, each re-scored on what is left.

use crate::heads::{
    Matrix, drops, gradient_scores, least_important, mask_scores, outside_top, top,
};
use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, ValueEnum};
use kd_data::{DataSpec, EncodedExample, TaskSpec};
use kd_runner::options::{DeviceArg, dev_examples};
use kd_teacher::{ModelFiles, TaskModel};
use kd_train::RunDir;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The model, what to remove from it, and where to write the pruned model.
#[derive(Args)]
#[command(group(
    ArgGroup::new("pruning")
        .required(true)
        .multiple(true)
        .args(["heads", "keep_ratio", "heads_per_layer", "ffn_keep_ratio", "ffn_size"])
))]
pub struct PruneArgs {
    /// A task model (with a task head): hub id or directory.
    #[arg(long)]
    model: String,
    /// The directory to write the pruned model to (refused when not empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Heads to remove, `LAYER:HEAD` with the original head indices from 0, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "ranked_heads")]
    heads: Vec<String>,
    /// Keep this share of the heads (in (0, 1]), removing the least important first (scored
    /// on the dev set of the task given by the data flags); every layer keeps one head at
    /// least.
    #[arg(long, group = "ranked_heads", allow_negative_numbers = true)]
    keep_ratio: Option<f64>,
    /// Keep this many heads in every layer, the most important of each.
    #[arg(long, group = "ranked_heads")]
    heads_per_layer: Option<usize>,
    /// The importance that orders the heads for --keep-ratio and --heads-per-layer.
    #[arg(long, value_enum, default_value = "gradient")]
    by: Importance,
    /// Take the importance from this `heads.json` (`kd heads` of the same model) instead of
    /// scoring the heads again.
    #[arg(long, requires = "ranked_heads")]
    scores: Option<PathBuf>,
    /// Keep this share (in (0, 1]) of the feed-forward neurons of every layer, the most
    /// important by the gradient of the loss with respect to a mask on each neuron (scored on
    /// the dev set): the model's `intermediate_size` shrinks to that share, rounded.
    #[arg(long, conflicts_with = "ffn_size", allow_negative_numbers = true)]
    ffn_keep_ratio: Option<f64>,
    /// Keep this many feed-forward neurons in every layer (the new `intermediate_size`), the
    /// most important as for --ffn-keep-ratio.
    #[arg(long)]
    ffn_size: Option<usize>,
    /// Prune in this many steps (1, at once, by default): each step goes an equal share of
    /// the way to the heads and neurons asked for, ranking what is left again (Michel et
    /// al.'s iterative pruning); prune.json gives each step's size and dev metric.
    #[arg(long, conflicts_with_all = ["heads", "scores"])]
    steps: Option<usize>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArg,
    /// The task the heads are scored on, and the pruned model evaluated on.
    #[command(flatten, next_help_heading = "Data")]
    data: DataSpec,
}

/// How heads are ranked for pruning.
#[derive(Clone, Copy, ValueEnum)]
pub enum Importance {
    /// The dev metric lost when the head alone is masked out.
    Mask,
    /// Michel et al.'s gradient score.
    Gradient,
}

/// Removes the heads and feed-forward neurons `args` ask for (step by step with `--steps`),
/// saves the pruned model into `--out` with `prune.json` (what went, the sizes and, given a
/// task, the dev metrics before and after) and prints that report.
pub fn run_prune(args: PruneArgs) -> Result<()> {
    // Bad input is refused before anything is loaded, scored or written.
    for (flag, ratio) in [
        ("--keep-ratio", args.keep_ratio),
        ("--ffn-keep-ratio", args.ffn_keep_ratio),
    ] {
        if let Some(ratio) = ratio
            && !(ratio > 0.0 && ratio <= 1.0)
        {
            bail!("{flag} {ratio} must lie in (0, 1]");
        }
    }
    let steps = args.steps.unwrap_or(1);
    if steps == 0 {
        bail!("--steps 0 must be at least 1");
    }
    RunDir::check_replaceable(&args.out, args.force)?;
    let files = ModelFiles::resolve(&args.model)?;
    let model = TaskModel::load(&files, args.data.max_seq_len, &args.device.select()?)?;
    let config = &model.config;
    let ffn_size = match (args.ffn_keep_ratio, args.ffn_size) {
        (Some(ratio), _) => {
            Some(((ratio * config.intermediate_size as f64).round() as usize).max(1))
        }
        (None, Some(size)) if size == 0 || size > config.intermediate_size => bail!(
            "--ffn-size {size} must lie between 1 and the model's intermediate size, {}",
            config.intermediate_size
        ),
        (None, size) => size,
    };
    let heads_in_layers: Vec<usize> = (0..config.num_hidden_layers)
        .map(|layer| config.heads_in_layer(layer))
        .collect();
    if let Some(count) = args.heads_per_layer {
        let fewest = heads_in_layers.iter().copied().min().unwrap_or(0);
        if count == 0 || count > fewest {
            bail!(
                "--heads-per-layer {count} must lie between 1 and the heads a layer of the \
                 model has, {fewest}"
            );
        }
    }
    let data_given = args.data.task.is_some() || args.data.dev.is_some();
    let dev = match data_given {
        true => Some(dev_examples(&model, &args.model, &args.data)?),
        false => None,
    };
    if ffn_size.is_some() && dev.is_none() {
        bail!(
            "--ffn-keep-ratio and --ffn-size rank the feed-forward neurons on a task's dev set: \
             give --task (or --dev)"
        );
    }
    let ranked_heads = args.keep_ratio.is_some() || args.heads_per_layer.is_some();
    if ranked_heads && args.scores.is_none() && dev.is_none() {
        bail!(
            "--keep-ratio and --heads-per-layer rank heads on a task's dev set: give --task \
             (or --dev), or --scores from kd heads"
        );
    }
    let saved = args.scores.as_deref().map(read_scores).transpose()?;
    if let (Some(saved), Some(path)) = (&saved, &args.scores) {
        // Rows a layer, a column a head of the layer's full count (removed ones null).
        let shape =
            |matrix: &Matrix| (matrix.len(), matrix.iter().map(Vec::len).max().unwrap_or(0));
        let scored = shape(&saved.masked);
        let model_shape = (config.num_hidden_layers, config.num_attention_heads);
        if scored != model_shape || shape(&saved.gradient) != model_shape {
            bail!(
                "{} scores {} layers of {} heads, but {} has {} layers of {}: score this model \
                 with kd heads",
                path.display(),
                scored.0,
                scored.1,
                args.model,
                model_shape.0,
                model_shape.1
            );
        }
        // The heads scored must be the model's: scores of the model before an earlier pruning
        // rank heads it no longer has.
        let scored_heads: Vec<Vec<usize>> = saved
            .masked
            .iter()
            .map(|row| (0..row.len()).filter(|&head| row[head].is_some()).collect())
            .collect();
        let remaining: Vec<Vec<usize>> = (0..config.num_hidden_layers)
            .map(|layer| config.remaining_heads(layer))
            .collect();
        if scored_heads != remaining {
            bail!(
                "{} scores other heads than {} has (pruned heads {:?}): the scores are of the \
                 model before a pruning; score this model with kd heads",
                path.display(),
                args.model,
                config.pruned_heads
            );
        }
    }
    let total_heads: usize = heads_in_layers.iter().sum();
    let most_heads = heads_in_layers.iter().copied().max().unwrap_or(0);
    let listed = parse_heads(&args.heads)?;
    let dev_ref = dev.as_ref().map(|(spec, _, dev)| (spec, &dev[..]));
    let evaluate = |model: &TaskModel| {
        dev_ref
            .map(|(spec, dev)| model.evaluate(spec, dev, args.batch_size))
            .transpose()
    };
    let count_heads = |model: &TaskModel| {
        (0..model.config.num_hidden_layers)
            .map(|layer| model.config.heads_in_layer(layer))
            .sum::<usize>()
    };
    // Each step goes an equal share of the way from the model's size to the goal, ranking
    // what is left again (Michel et al.'s iterative pruning); one step prunes at once.
    let mut pruned = model.prune_heads(&BTreeMap::new())?;
    let mut trajectory = Vec::new();
    for step in 1..=steps {
        let share = step as f64 / steps as f64;
        let toward = |from: usize, to: usize| {
            (from as f64 - from.saturating_sub(to) as f64 * share).round() as usize
        };
        let goal = match (args.keep_ratio, args.heads_per_layer) {
            (Some(ratio), _) => HeadGoal::Keep(toward(
                total_heads,
                (ratio * total_heads as f64).round() as usize,
            )),
            (None, Some(count)) => HeadGoal::PerLayer(toward(most_heads, count)),
            (None, None) => HeadGoal::Listed(&listed),
        };
        let ffn = ffn_size
            .map(|size| toward(config.intermediate_size, size))
            .filter(|&size| size < pruned.config.intermediate_size);
        pruned = prune_step(&pruned, goal, ffn, dev_ref, saved.as_ref(), &args)?;
        if steps > 1 {
            let point = serde_json::json!({
                "step": step,
                "heads": count_heads(&pruned),
                "ffn": pruned.config.intermediate_size,
                "dev": evaluate(&pruned)?,
            });
            eprintln!("step {step} of {steps}: {point}");
            trajectory.push(point);
        }
    }
    // The heads this run removed (the model may have come pruned).
    let removed: BTreeMap<&String, Vec<usize>> = pruned
        .config
        .pruned_heads
        .iter()
        .map(|(layer, heads)| {
            let before = model.config.pruned_heads.get(layer);
            let new = heads
                .iter()
                .filter(|h| !before.is_some_and(|b| b.contains(h)));
            (layer, new.copied().collect::<Vec<usize>>())
        })
        .filter(|(_, heads)| !heads.is_empty())
        .collect();
    let mut report = serde_json::json!({
        "model": args.model,
        "out": args.out,
        "removed": removed,
        "pruned_heads": pruned.config.pruned_heads,
        "heads": { "before": count_heads(&model), "after": count_heads(&pruned) },
        "ffn": {
            "before": model.config.intermediate_size,
            "after": pruned.config.intermediate_size,
        },
        "params": {
            "before": model.params.num_parameters(),
            "after": pruned.params.num_parameters(),
        },
        "dev": { "before": evaluate(&model)?, "after": evaluate(&pruned)? },
    });
    if steps > 1 {
        report["steps"] = serde_json::Value::Array(trajectory);
    }
    // Written whole: a `--force` leaves none of an earlier model's files (an ONNX graph of
    // the unpruned model) beside the pruned one.
    RunDir::replace_whole(&args.out, args.force, |dir| {
        pruned.save(dir)?;
        kd_bert::write_json_atomically(&dir.join("prune.json"), &report)
    })?;
    println!("{report}");
    eprintln!(
        "{} of {} heads removed, feed-forward size {} to {}; pruned model saved to {}",
        count_heads(&model) - count_heads(&pruned),
        count_heads(&model),
        model.config.intermediate_size,
        pruned.config.intermediate_size,
        args.out.display()
    );
    // transformers 5 refuses the pruned directory with a shape-mismatch report that does not
    // say why: pruned_heads is a key it no longer reads.
    if !pruned.config.pruned_heads.is_empty() {
        eprintln!(
            "for transformers 5, which has no pruned_heads: kd export --model {} --restore-heads --out DIR",
            args.out.display()
        );
    }
    Ok(())
}

/// The heads one pruning step leaves.
enum HeadGoal<'a> {
    /// These heads (layer to original indices) go.
    Listed(&'a BTreeMap<usize, BTreeSet<usize>>),
    /// This many heads stay in all, the least important going first.
    Keep(usize),
    /// Each layer keeps at most this many, its most important.
    PerLayer(usize),
}

/// `current` less the heads `goal` asks to go and with `ffn` feed-forward neurons a layer
/// (the most important), ranked on `dev` (or by `saved` scores from `kd heads`).
fn prune_step(
    current: &TaskModel,
    goal: HeadGoal,
    ffn: Option<usize>,
    dev: Option<(&TaskSpec, &[EncodedExample])>,
    saved: Option<&SavedScores>,
    args: &PruneArgs,
) -> Result<TaskModel> {
    let ranked = !matches!(goal, HeadGoal::Listed(_));
    // One gradient pass scores the heads (unless read from --scores or ranked by masking)
    // and the neurons together.
    let gradient_needed =
        ffn.is_some() || (ranked && saved.is_none() && matches!(args.by, Importance::Gradient));
    let gradients = match dev {
        Some((spec, dev)) if gradient_needed => Some(gradient_scores(
            current,
            spec,
            dev,
            args.batch_size,
            ffn.is_some(),
        )?),
        _ => None,
    };
    let scores = || -> Result<Matrix> {
        match (saved, args.by, &gradients, dev) {
            (Some(saved), Importance::Gradient, _, _) => Ok(saved.gradient.clone()),
            (Some(saved), Importance::Mask, _, _) => Ok(drops(saved.baseline, &saved.masked)),
            (None, Importance::Gradient, Some((gradient, _)), _) => Ok(gradient.clone()),
            (None, Importance::Mask, _, Some((spec, dev))) => {
                let (baseline, masked, _) = mask_scores(current, spec, dev, args.batch_size)?;
                Ok(drops(baseline, &masked))
            }
            _ => bail!("the heads were not scored"),
        }
    };
    let remove = match goal {
        HeadGoal::Listed(heads) => heads.clone(),
        HeadGoal::Keep(count) => least_important(&current.config, &scores()?, count),
        HeadGoal::PerLayer(count) => outside_top(&scores()?, count),
    };
    let mut next = current.prune_heads(&remove)?;
    if let (Some(size), Some((_, neurons))) = (ffn, &gradients) {
        let keep: Vec<BTreeSet<usize>> = neurons
            .iter()
            .map(|layer| top(layer.iter().copied().enumerate(), size))
            .collect();
        next = next.prune_ffn(&keep)?;
    }
    Ok(next)
}

/// The scores of a `kd heads` run, for `kd prune --scores`.
fn read_scores(path: &Path) -> Result<SavedScores> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not kd heads' heads.json", path.display()))
}

/// What `kd prune --scores` reads of a `heads.json`.
#[derive(Deserialize)]
struct SavedScores {
    baseline: f64,
    masked: Matrix,
    gradient: Matrix,
}

/// `LAYER:HEAD` pairs, grouped by layer.
fn parse_heads(heads: &[String]) -> Result<BTreeMap<usize, BTreeSet<usize>>> {
    let mut remove: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for pair in heads {
        let parsed = pair.split_once(':').and_then(|(layer, head)| {
            Some((layer.trim().parse().ok()?, head.trim().parse().ok()?))
        });
        let Some((layer, head)) = parsed else {
            bail!("--heads takes LAYER:HEAD pairs such as 0:3,2:11; got {pair:?}");
        };
        remove.entry(layer).or_default().insert(head);
    }
    Ok(remove)
}
