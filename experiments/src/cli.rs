//! Subcommands and their options.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kd_data::{AugmentConfig, DataSpec, WordNeighbours, augment};
use kd_teacher::{Backbone, Pooling};

use crate::bench;
use crate::bench_args::BenchArgs;
use kd_report::{attention, compare, heads, prune};
use kd_runner::distill;
use kd_runner::evaluate::{self, EvalArgs};
use kd_runner::finetune::{self, FinetuneArgs};
use kd_runner::general;
use kd_runner::multitask;
use kd_runner::options::{DeviceArg, shared_dir};
use kd_runner::predict::{self, PredictArgs};
use kd_runner::recipe::Recipe;
use kd_runner::run::{self, RunOptions, RunSummary};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "kd", version, about = "Knowledge distillation for BERT models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a BERT checkpoint on a task and save the best epoch as an HF model directory.
    Finetune(FinetuneArgs),
    /// Evaluate a task model on a task's dev set (or a TSV file) and print the metrics as JSON.
    Eval(EvalArgs),
    /// Print one JSON object per text with the predicted label and probabilities.
    Predict(PredictArgs),
    /// Print one JSON array (the sentence embedding) per text.
    Embed(EmbedArgs),
    /// Distil a student from a teacher by a TOML recipe (see experiments/recipes/).
    Distill(DistillArgs),
    /// Write TinyBERT-style augmented training examples (words replaced by embedding-space
    /// neighbours) as a TSV file for a recipe's `data.augment`.
    Augment(AugmentArgs),
    /// Time inference, training and distillation steps, optionally beside PyTorch.
    Bench(BenchArgs),
    /// Compare models with a reference (the teacher) on the same dev examples: metric with a
    /// bootstrap interval, agreement, KL, McNemar's test, size, latency, throughput, memory.
    Compare(compare::CompareArgs),
    /// Draw a run's learning curves (every loss component and dev value against the step) as
    /// PNG and SVG.
    Report(ReportArgs),
    /// Write a compact copy of a model: f16 or bf16 weights, int8 dense layers, a vocabulary
    /// pruned to the tokens some texts use; or the model as an ONNX graph.
    Export(ExportArgs),
    /// Score every attention head on a task's dev set (the metric with the head masked out,
    /// with it alone in its layer, and Michel et al.'s gradient importance) as JSON and
    /// heatmaps.
    Heads(heads::HeadsArgs),
    /// Remove attention heads (HF's `pruned_heads`: named ones, or the least important down
    /// to a share or a count a layer) and feed-forward neurons (the least important, the same
    /// count in every layer: a smaller `intermediate_size`) for good.
    Prune(prune::PruneArgs),
    /// Draw attention maps of a text (tokens on both axes): a grid of each layer's heads, or
    /// one head.
    Attention(attention::AttentionArgs),
}

#[derive(Args)]
struct ExportArgs {
    /// The model to export: hub id or directory.
    #[arg(long)]
    model: String,
    /// The directory to write (refused when not empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// The precision of the floating-point weights.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: kd_export::Precision,
    /// Store weights as int8 (weight-only, one scale per row): `int8` the dense layers',
    /// `int8-embeddings` the embedding tables' too; kd dequantizes them when it loads the model.
    #[arg(long, value_enum)]
    quantize: Option<kd_export::Quantization>,
    /// Keep only the tokens these texts use (files, a text a line), plus the special and
    /// single-character tokens; the embedding matrix and the tokenizer are rewritten together.
    #[arg(long, num_args = 1.., value_name = "FILES")]
    prune_vocab: Vec<PathBuf>,
    /// `onnx` writes a task model's graph (opset 17, f32, dynamic batch and length) for
    /// ONNX Runtime, tract and the like.
    #[arg(long, value_enum, default_value = "safetensors")]
    format: kd_export::Format,
    /// Write a model whose attention heads were pruned (`kd prune`) at full shape, those
    /// heads zero, for tools that do not prune heads (transformers 5, ONNX).
    #[arg(long)]
    restore_heads: bool,
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct DistillArgs {
    #[arg(long)]
    recipe: PathBuf,
    /// Output directory [default: runs/<recipe name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override a recipe field, e.g. --set training.lr=5e-5 --set stages.0.epochs=1.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    #[arg(long)]
    force: bool,
    /// Continue the interrupted run in --out from its last checkpoint.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Where teacher outputs are cached, shared by runs with the same teacher and data.
    #[arg(long, default_value = "runs/cache")]
    cache_dir: PathBuf,
    /// Quick setting: stop each stage after this many updates.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Quick setting: train on the first N training examples only.
    #[arg(long)]
    max_train_examples: Option<usize>,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args)]
struct ReportArgs {
    /// A `kd finetune` or `kd distill` output directory.
    run: PathBuf,
    /// Where to write the charts [default: RUN/report].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    Mean,
    Cls,
}

#[derive(Args)]
struct EmbedArgs {
    #[arg(long)]
    model: String,
    #[arg(long, value_enum, default_value = "mean")]
    pooling: PoolingArg,
    /// Scale each embedding to unit length.
    #[arg(long)]
    normalize: bool,
    #[arg(long, default_value_t = 256)]
    max_seq_len: usize,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(required = true)]
    texts: Vec<String>,
}

#[derive(Args)]
struct AugmentArgs {
    /// The model whose word embeddings and vocabulary give the candidates (the teacher, or its
    /// backbone): hub id or directory.
    #[arg(long)]
    model: String,
    /// The TSV file to write (the task's columns; the original examples are not repeated).
    #[arg(long)]
    out: PathBuf,
    /// New examples per training example (TinyBERT: 20).
    #[arg(long, default_value_t = 20)]
    per_example: usize,
    /// Probability of replacing each replaceable word (TinyBERT: 0.4).
    #[arg(long, default_value_t = 0.4)]
    replace_prob: f64,
    /// Candidate replacements per word (TinyBERT: 15).
    #[arg(long, default_value_t = 15)]
    candidates: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten, next_help_heading = "Data")]
    data: DataSpec,
}

pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Finetune(args) => run_finetune(args),
        Command::Eval(args) => {
            println!("{}", evaluate::run(&args)?);
            Ok(())
        }
        Command::Predict(args) => predict::run(args),
        Command::Embed(args) => run_embed(args),
        Command::Distill(args) => run_distill(args),
        Command::Augment(args) => run_augment(args),
        Command::Export(args) => run_export(args),
        Command::Compare(args) => {
            println!("{}", compare::run(&args)?.table);
            Ok(())
        }
        Command::Report(args) => {
            for path in kd_report::learning_curves(&args.run, args.out.as_deref())? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::Heads(args) => heads::run_heads(args),
        Command::Prune(args) => prune::run_prune(args),
        Command::Attention(args) => attention::run_attention(args),
    }
}

fn run_finetune(args: FinetuneArgs) -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = finetune::run(&args, kd_train::interrupt_flag()?, &command)?;
    print_summary(&report, report.interrupted)?;
    eprintln!(
        "best {} {:.2}% at epoch {}, {:.0} examples/s, {:.0} s; saved to {}",
        report.metric,
        report.value * 100.0,
        report.best_epoch,
        report.examples_per_s,
        report.wall_time_s,
        args.out.display()
    );
    Ok(())
}

fn run_embed(args: EmbedArgs) -> Result<()> {
    let device = args.device.select()?;
    let encoder = Backbone::open(&args.model, args.max_seq_len, &device)?;
    let pooling = match args.pooling {
        PoolingArg::Mean => Pooling::Mean,
        PoolingArg::Cls => Pooling::Cls,
    };
    let embeddings = encoder
        .embed(&args.texts, pooling, args.normalize)
        .context("cannot embed the texts")?;
    for row in embeddings.to_vec2::<f32>()? {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}

fn run_export(args: ExportArgs) -> Result<()> {
    let options = kd_export::ExportOptions {
        format: args.format,
        precision: args.dtype,
        quantize: args.quantize,
        prune_vocab: args.prune_vocab,
        restore_heads: args.restore_heads,
    };
    let report = kd_runner::export::run(&args.model, &args.out, args.force, &options)?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!(
        "{} written: weights {:.1} MB -> {:.1} MB, vocabulary {} -> {} tokens",
        args.out.display(),
        report.weights_bytes_before as f64 / 1e6,
        report.weights_bytes_after as f64 / 1e6,
        report.vocab_before,
        report.vocab_after
    );
    Ok(())
}

fn run_augment(args: AugmentArgs) -> Result<()> {
    if kd_data::TableFormat::of(&args.out) != Some(kd_data::TableFormat::Tsv) {
        bail!(
            "{}: kd augment writes TSV; name the output file.tsv",
            args.out.display()
        );
    }
    if args.out.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    if !(0.0..=1.0).contains(&args.replace_prob) {
        bail!(
            "--replace-prob must lie in [0, 1], got {}",
            args.replace_prob
        );
    }
    for (flag, value) in [
        ("--per-example", args.per_example),
        ("--candidates", args.candidates),
    ] {
        if value == 0 {
            bail!("{flag} 0 would write no augmented examples: it must be at least 1");
        }
    }
    // Only the training file is read: augmentation needs no dev set.
    let spec = args.data.task_spec()?;
    let mut labels = Vec::new();
    let train = args.data.read_train(&spec, &shared_dir(), &mut labels)?;
    let encoder = Backbone::open(&args.model, 512, &args.device.select()?)?;
    let texts = train
        .iter()
        .flat_map(|e| std::iter::once(e.text.as_str()).chain(e.pair.as_deref()));
    let neighbours = WordNeighbours::new(
        &encoder.tokenizer.vocab(),
        encoder.model.word_embeddings(),
        &WordNeighbours::words_of(texts),
        args.candidates,
    )?;
    let config = AugmentConfig {
        per_example: args.per_example,
        replace_prob: args.replace_prob,
        seed: args.seed,
    };
    let augmented = augment(&train, &neighbours, &config);
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    spec.write(&args.out, &augmented, &labels)?;
    eprintln!(
        "{} augmented examples from {} in {}",
        augmented.len(),
        train.len(),
        args.out.display()
    );
    Ok(())
}

/// Prints a run's summary as JSON; an interrupted run then exits as the signal's (130 for
/// Ctrl-C) with how to go on.
fn print_summary(summary: &impl serde::Serialize, interrupted: bool) -> Result<()> {
    println!("{}", serde_json::to_string(summary)?);
    if interrupted {
        eprintln!(
            "interrupted: the work done is kept; continue with the same command and --resume"
        );
        std::process::exit(kd_train::interrupted_exit_code());
    }
    Ok(())
}

/// The general student and where it is.
fn print_general(summary: &general::GeneralSummary, out: &Path) {
    eprintln!(
        "general student ({} layers x {}, {} parameters) saved to {} ({:.0} s)",
        summary.student.layers,
        summary.student.hidden,
        summary.student.params,
        out.display(),
        summary.wall_time_s
    );
}

/// Each task's teacher and student side by side, and where the student is.
fn print_multitask(summary: &multitask::MultiTaskSummary, out: &Path) {
    eprintln!(
        "\n{:<10} {:<16} {:>9} {:>9}",
        "task", "metric", "teacher", "student"
    );
    for task in &summary.tasks {
        eprintln!(
            "{:<10} {:<16} {:>8.2}% {:>8.2}%",
            task.name,
            task.metric,
            task.teacher.dev[&task.metric] * 100.0,
            task.student_dev[&task.metric] * 100.0
        );
    }
    eprintln!(
        "{:<10} {:<16} {:>8.2}% {:>8.2}%",
        "mean",
        "",
        summary.teacher_mean * 100.0,
        summary.student_mean * 100.0
    );
    eprintln!(
        "student ({} layers x {}, {} parameters for {} tasks) saved to {}, each task's model \
         in {}/tasks/NAME ({:.0} s)",
        summary.student.layers,
        summary.student.hidden,
        summary.student.params,
        summary.tasks.len(),
        out.display(),
        out.display(),
        summary.wall_time_s
    );
}

fn run_distill(args: DistillArgs) -> Result<()> {
    let recipe = Recipe::load(&args.recipe, &args.overrides)?;
    let out = run::out_dir(&recipe, args.out.as_deref());
    let options = RunOptions {
        out: Some(&out),
        force: args.force,
        resume: args.resume,
        cache_dir: &args.cache_dir,
        shared_dir: &shared_dir(),
        device: args.device.name,
        max_steps: args.max_steps,
        max_train_examples: args.max_train_examples,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let summary = run::run_recipe(recipe, &options, kd_train::interrupt_flag()?)?;
    print_summary(&summary, summary.interrupted())?;
    match &summary {
        RunSummary::Task(summary) => print_task(summary, &out),
        RunSummary::General(summary) => print_general(summary, &out),
        RunSummary::MultiTask(summary) => print_multitask(summary, &out),
    }
    Ok(())
}

/// The teacher and the student side by side, and where the student is.
fn print_task(summary: &distill::Summary, out: &Path) {
    let metric = &summary.metric;
    let row = |role: &str, model: &distill::ModelSummary| {
        format!(
            "{role:<8} {:>6} {:>6} {:>11} {:>9.2}%",
            model.layers,
            model.hidden,
            model.params,
            model.dev.get(metric).copied().unwrap_or(f64::NAN) * 100.0
        )
    };
    eprintln!(
        "\n{:<8} {:>6} {:>6} {:>11} {:>10}",
        "model", "layers", "hidden", "parameters", metric
    );
    eprintln!("{}", row("teacher", &summary.teacher));
    eprintln!("{}", row("student", &summary.student));
    eprintln!(
        "student saved to {} ({:.0} s)",
        out.display(),
        summary.wall_time_s
    );
}
