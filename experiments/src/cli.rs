//! Subcommands and their options.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kd_bert::Precision;
use kd_data::{AugmentConfig, DataSpec, WordNeighbours, augment};
use kd_teacher::{Backbone, ModelFiles, Pooling, TaskModel, finetune};
use kd_train::{RunDir, RunInputs, TrainerConfig};

use crate::args::{DeviceArg, dev_examples, shared_dir};
use crate::bench;
use crate::bench_args::BenchArgs;
use crate::predict::{self, PredictArgs};
use kd_runner::distill::{self, DistillOptions};
use kd_runner::general;
use kd_runner::multitask;
use kd_runner::recipe::Recipe;
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
    Compare(crate::compare::CompareArgs),
    /// Draw a run's learning curves (every loss component and dev value against the step) as
    /// PNG and SVG.
    Report(ReportArgs),
    /// Write a compact copy of a model: f16 or bf16 weights, int8 dense layers, a vocabulary
    /// pruned to the tokens some texts use; or the model as an ONNX graph.
    Export(ExportArgs),
    /// Score every attention head on a task's dev set (the metric with the head masked out,
    /// with it alone in its layer, and Michel et al.'s gradient importance) as JSON and
    /// heatmaps.
    Heads(crate::heads::HeadsArgs),
    /// Remove attention heads (HF's `pruned_heads`: named ones, or the least important down
    /// to a share or a count a layer) and feed-forward neurons (the least important, the same
    /// count in every layer: a smaller `intermediate_size`) for good.
    Prune(crate::heads::PruneArgs),
    /// Draw attention maps of a text (tokens on both axes): a grid of each layer's heads, or
    /// one head.
    Attention(crate::heads::AttentionArgs),
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

#[derive(Args)]
struct FinetuneArgs {
    /// Hub id (e.g. sentence-transformers/all-MiniLM-L6-v2) or local model directory.
    #[arg(long)]
    model: String,
    /// Output directory (refused if not empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    /// Continue the interrupted run in --out from its last checkpoint.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Evaluate and checkpoint every N updates, besides each epoch's end.
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fraction of the updates spent on linear warmup.
    #[arg(long, default_value_t = 0.1)]
    warmup: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Quick setting: stop after this many updates.
    #[arg(long)]
    max_steps: Option<usize>,
    /// f32, or bf16: the encoder's products in bf16, with f32 master weights, loss and
    /// optimizer state.
    #[arg(long, default_value_t = Precision::F32)]
    precision: Precision,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten, next_help_heading = "Data")]
    data: DataSpec,
}

#[derive(Args)]
struct EvalArgs {
    /// A task model directory (with a task head).
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArg,
    /// The task; it is evaluated on its dev file (--dev, or --data, names another TSV).
    #[command(flatten, next_help_heading = "Data")]
    data: DataSpec,
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
        Command::Eval(args) => run_eval(args),
        Command::Predict(args) => predict::run(args),
        Command::Embed(args) => run_embed(args),
        Command::Distill(args) => run_distill(args),
        Command::Augment(args) => run_augment(args),
        Command::Export(args) => run_export(args),
        Command::Compare(args) => crate::compare::run(args),
        Command::Report(args) => {
            for path in kd_report::learning_curves(&args.run, args.out.as_deref())? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::Heads(args) => crate::heads::run_heads(args),
        Command::Prune(args) => crate::heads::run_prune(args),
        Command::Attention(args) => crate::heads::run_attention(args),
    }
}

fn run_finetune(args: FinetuneArgs) -> Result<()> {
    if !args.data.unlabeled.is_empty() || args.data.max_unlabeled.is_some() {
        bail!("kd finetune learns from labels only; unlabeled text is for kd distill's recipes");
    }
    let data = args.data.load(&shared_dir(), Vec::new())?;
    let spec = &data.spec;
    let files = ModelFiles::resolve(&args.model)?;
    let device = args.device.select()?;
    args.precision.check(&device)?;
    let mut model = TaskModel::from_backbone(
        &files,
        spec.kind,
        &data.labels,
        args.seed,
        args.data.max_seq_len,
        &device,
    )?;
    model.set_precision(args.precision);
    let config = TrainerConfig {
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        max_steps: args.max_steps,
        eval_every: args.eval_every,
        ..TrainerConfig::default()
    };
    let mut settings =
        serde_json::json!({ "model": args.model, "data": args.data, "training": config });
    // Named only when not f32: runs begun before the flag existed still resume.
    if !args.precision.is_f32() {
        settings["precision"] = serde_json::json!(args.precision);
    }
    let mut inputs = RunInputs::new(&settings)?;
    for file in args
        .data
        .files(&shared_dir())?
        .iter()
        .chain([&files.config, &files.weights])
    {
        inputs.file(file)?;
    }
    // Everything is loaded and checked before the output directory is touched.
    let out = RunDir::for_run(&args.out, args.force, args.resume, &inputs)?;
    eprintln!(
        "fine-tuning {} ({} parameters) on {}: {} train, {} dev examples",
        args.model,
        model.params.num_parameters(),
        spec.name,
        data.train.len(),
        data.dev.len()
    );
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let stop = kd_train::interrupt_flag()?;
    let report = finetune(&model, &data, &config, &out, args.resume, stop, &command)?;
    println!("{}", serde_json::to_string(&report)?);
    if report.interrupted {
        eprintln!("interrupted: checkpoint saved; continue with the same command and --resume");
        std::process::exit(130);
    }
    eprintln!(
        "best {} {:.2}% at epoch {}, {:.0} examples/s, {:.0} s; saved to {}",
        report.metric,
        report.value * 100.0,
        report.best_epoch,
        report.examples_per_s,
        report.wall_time_s,
        out.path().display()
    );
    Ok(())
}

fn run_eval(args: EvalArgs) -> Result<()> {
    args.data.ensure_no_training_options("kd eval")?;
    let files = ModelFiles::resolve(&args.model)?;
    let device = args.device.select()?;
    let model = TaskModel::load_for_inference(&files, args.data.max_seq_len, &device)?;
    let (spec, path, examples) = dev_examples(&model, &args.model, &args.data)?;
    let metrics = model.evaluate(&spec, &examples, args.batch_size)?;
    let output = serde_json::json!({
        "task": spec.name,
        "data": path,
        "examples": examples.len(),
        "metrics": metrics,
    });
    println!("{output}");
    Ok(())
}

fn run_embed(args: EmbedArgs) -> Result<()> {
    let files = ModelFiles::resolve(&args.model)?;
    let device = args.device.select()?;
    let encoder = Backbone::load_for_inference(&files, args.max_seq_len, &device)?;
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
    let model = ModelFiles::resolve(&args.model)?;
    let options = kd_export::ExportOptions {
        format: args.format,
        precision: args.dtype,
        quantize: args.quantize,
        prune_vocab: args.prune_vocab,
        restore_heads: args.restore_heads,
    };
    kd_export::check(&model, &options)?;
    let out = kd_train::RunDir::create(&args.out, args.force)?;
    let report = kd_export::export(&model, out.path(), &options)?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!(
        "{} written: weights {:.1} MB -> {:.1} MB, vocabulary {} -> {} tokens",
        out.path().display(),
        report.weights_bytes_before as f64 / 1e6,
        report.weights_bytes_after as f64 / 1e6,
        report.vocab_before,
        report.vocab_after
    );
    Ok(())
}

fn run_augment(args: AugmentArgs) -> Result<()> {
    if args.out.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    if !(0.0..=1.0).contains(&args.replace_prob) {
        bail!(
            "--replace-prob must lie in [0, 1], got {}",
            args.replace_prob
        );
    }
    // Only the training file is read: augmentation needs no dev set.
    let spec = args.data.task_spec()?;
    let mut labels = Vec::new();
    let train = args.data.read_train(&spec, &shared_dir(), &mut labels)?;
    let files = ModelFiles::resolve(&args.model)?;
    let encoder = Backbone::load_for_inference(&files, 512, &args.device.select()?)?;
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

/// Prints a run's summary as JSON; an interrupted run then exits 130 with how to go on.
fn print_summary(summary: &impl serde::Serialize, interrupted: bool) -> Result<()> {
    println!("{}", serde_json::to_string(summary)?);
    if interrupted {
        eprintln!("interrupted: checkpoint saved; continue with the same command and --resume");
        std::process::exit(130);
    }
    Ok(())
}

fn run_general(recipe: &Recipe, options: &DistillOptions, out: &Path) -> Result<()> {
    let summary = general::run(recipe, options, kd_train::interrupt_flag()?)?;
    print_summary(&summary, summary.interrupted)?;
    eprintln!(
        "general student ({} layers x {}, {} parameters) saved to {} ({:.0} s)",
        summary.student.layers,
        summary.student.hidden,
        summary.student.params,
        out.display(),
        summary.wall_time_s
    );
    Ok(())
}

fn run_multitask(recipe: &Recipe, options: &DistillOptions, out: &Path) -> Result<()> {
    let summary = multitask::run(recipe, options, kd_train::interrupt_flag()?)?;
    print_summary(&summary, summary.interrupted)?;
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
    Ok(())
}

fn run_distill(args: DistillArgs) -> Result<()> {
    let mut overrides = args.overrides.clone();
    if let Some(steps) = args.max_steps {
        overrides.push(format!("training.max_steps={steps}"));
    }
    let mut recipe = Recipe::load(&args.recipe, &overrides)?;
    if let Some(examples) = args.max_train_examples {
        recipe.data.max_train_examples = Some(examples);
        for task in &mut recipe.tasks {
            task.data.max_train_examples = Some(examples);
        }
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&recipe.name));
    let device = kd_bert::device::select(args.device.name.or(recipe.training.device))?;
    recipe.training.precision.check(&device)?;
    let options = DistillOptions {
        device,
        out: &out,
        force: args.force,
        resume: args.resume,
        cache_dir: &args.cache_dir,
        shared_dir: &shared_dir(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    if !recipe.data.corpus.is_empty() {
        return run_general(&recipe, &options, &out);
    }
    if !recipe.tasks.is_empty() {
        return run_multitask(&recipe, &options, &out);
    }
    let summary = distill::run(&recipe, &options, kd_train::interrupt_flag()?)?;
    print_summary(&summary, summary.interrupted)?;
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
    Ok(())
}
