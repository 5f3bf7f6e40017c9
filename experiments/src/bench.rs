//! `kd bench`: times encoder inference, a training step (forward, backward, AdamW) and a
//! distillation step (teacher forward, then a half-depth student's step on the DistilBERT
//! objective) on random fixed-shape batches, each case in a fresh process so that its peak
//! memory is its own; with `--pytorch`, runs `benches/pytorch_bench.py` on the same cases and
//! prints the two side by side. The `latency` case instead answers real dev sentences one at
//! a time with given task models (`benches/pytorch_latency.py` beside it: PyTorch eager and
//! ONNX Runtime on the same models and sentences).

use crate::bench_args::{BenchArgs, Case, Shape};
use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use clap::ValueEnum;
use kd_bert::{
    AttentionMaps, BertConfig, BertForSequenceClassification, BertInput, FrozenWeights, Mode,
    Params,
};
use kd_bert::{DeviceName, Precision};
use kd_data::TaskKind;
use kd_losses::{DistillOutputs, LossBatch, Objective, ObjectiveConfig};
use kd_report::child::{kd_child, peak_rss_mb, run_child};
use kd_report::latency;
use kd_runner::options::DeviceArg;
use kd_teacher::task_loss;
use kd_train::{AdamW, AdamWConfig};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// The read case: each of `--read-files` read whole as the task's examples, the median of
/// `--runs` reads after `--warmup`, and its speed against the first file's.
fn time_reading(args: &BenchArgs) -> Result<()> {
    if args.read_files.is_empty() {
        bail!("the read case needs --read-files");
    }
    let spec = args.data.task_spec()?;
    let mut rows = Vec::new();
    let mut first_ms = None;
    for path in &args.read_files {
        let mut times = Vec::new();
        let mut examples = 0;
        for run in 0..args.warmup + args.runs {
            let started = Instant::now();
            examples = spec.read(path, &mut Vec::new())?.len();
            if run >= args.warmup {
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let median_ms = times[times.len() / 2];
        let first = *first_ms.get_or_insert(median_ms);
        println!(
            "{}: {examples} examples in {median_ms:.1} ms (median of {}), {:.0} examples/s, \
             {:.2}x the first file's time",
            path.display(),
            args.runs,
            examples as f64 / median_ms * 1e3,
            median_ms / first
        );
        rows.push(serde_json::json!({
            "file": path,
            "examples": examples,
            "median_ms": median_ms,
            "min_ms": times[0],
            "max_ms": times[times.len() - 1],
            "relative_to_first": median_ms / first,
        }));
    }
    if let Some(json) = &args.json {
        let report = serde_json::json!({ "cpu": cpu_model(), "case": "read", "files": rows });
        kd_bert::write_json_atomically(json, &report)?;
    }
    Ok(())
}

impl Shape {
    /// (layers, hidden, heads, intermediate, batch)
    fn dims(self) -> (usize, usize, usize, usize, usize) {
        match self {
            Shape::Small => (6, 384, 12, 1536, 32),
            Shape::Base => (12, 768, 12, 3072, 8),
        }
    }

    fn config(self, layers: usize) -> Result<BertConfig> {
        let (_, hidden, heads, intermediate, _) = self.dims();
        let mut config: BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 30522,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": intermediate,
            "max_position_embeddings": 512,
        }))?;
        config.set_classification_head(
            &["negative".into(), "positive".into()],
            kd_bert::ProblemType::SingleLabelClassification,
        );
        Ok(config)
    }
}

impl Case {
    /// Floating-point operations in one step of `shape` at `seq_len`: a forward pass counts
    /// the dense layers and the attention products, the last layer at [CLS] only where the
    /// step reads the logits alone (as kd's inference and fine-tuning do); a backward pass
    /// twice that.
    fn flops(self, shape: Shape, seq_len: usize) -> f64 {
        let (layers, hidden, _, intermediate, batch) = shape.dims();
        let (tokens, seq_len) = ((batch * seq_len) as f64, seq_len as f64);
        let (hidden, intermediate) = (hidden as f64, intermediate as f64);
        // A layer answering at `rows` positions: keys and values at every one, the queries,
        // attention products, attention output and feed-forward at those rows.
        let layer = |rows: f64| {
            let keys_values = 2.0 * tokens * 2.0 * hidden * hidden;
            let dense = 2.0 * rows * (2.0 * hidden * hidden + 2.0 * hidden * intermediate);
            keys_values + dense + 2.0 * 2.0 * rows * seq_len * hidden
        };
        let forward = |layers: usize, logits_only: bool| {
            let last = if logits_only { batch as f64 } else { tokens };
            (layers - 1) as f64 * layer(tokens) + layer(last)
        };
        match self {
            Case::Gemm => 2.0 * tokens * hidden * intermediate,
            Case::Inference => forward(layers, true),
            Case::Train => 3.0 * forward(layers, true),
            Case::Distill => forward(layers, false) + 3.0 * forward(layers / 2, false),
            Case::Latency | Case::Read => 0.0,
        }
    }
}

/// One case's timings, as both kd and the PyTorch script print them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    shape: Shape,
    case: Case,
    times_ms: Vec<f64>,
    min_ms: f64,
    median_ms: f64,
    peak_rss_mb: f64,
    /// Filled in by the parent from the case's operation count.
    #[serde(default)]
    gflop_per_s: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.child && args.cases == [Case::Latency] {
        let [model] = &args.models[..] else {
            bail!("a child latency bench runs one model")
        };
        println!(
            "{}",
            serde_json::to_string(&latency::measure(model, &args.data, device_name(&args))?)?
        );
        return Ok(());
    }
    if args.child {
        let [shape] = args.shapes[..] else {
            bail!("a child bench runs one shape")
        };
        let [case] = args.cases[..] else {
            bail!("a child bench runs one case")
        };
        let device = device_name(&args).open()?;
        let measurement = measure(shape, case, &args, &device)?;
        println!("{}", serde_json::to_string(&measurement)?);
        return Ok(());
    }
    println!("CPU: {}, {} threads", cpu_model(), args.threads);
    if args.cases.contains(&Case::Read) {
        if args.cases.len() > 1 {
            bail!("the read case times data files: run it alone (--cases read)");
        }
        return time_reading(&args);
    }
    // The children are told the device, the default included.
    let device = args.device.select()?;
    args.precision.check(&device)?;
    let device = DeviceName::of(&device);
    let args = BenchArgs {
        device: DeviceArg { name: Some(device) },
        ..args
    };
    let mut rows = Vec::new();
    if args.cases.contains(&Case::Latency) {
        rows.extend(latency_table(&args)?);
    }
    let mut header = true;
    for &shape in &args.shapes {
        // Each round's gemm rate, the ceiling of that round's steps.
        let mut gemm_rates = Vec::new();
        for &case in args.cases.iter().filter(|&&case| case != Case::Latency) {
            let rate = |mut m: Measurement| {
                m.gflop_per_s = case.flops(shape, args.seq_len) / m.median_ms / 1e6;
                m
            };
            let mut ratios = Vec::new();
            for round in 0..args.rounds {
                let kd = || run_child(kd_command(shape, case, &args)?).map(rate);
                let torch =
                    |python| run_child(pytorch_command(python, shape, case, &args)).map(rate);
                let (kd, torch) = match &args.pytorch {
                    None => (kd()?, None),
                    Some(python) if round % 2 == 0 => (kd()?, Some(torch(python)?)),
                    Some(python) => {
                        let torch = torch(python)?;
                        (kd()?, Some(torch))
                    }
                };
                print_row(&kd, torch.as_ref(), header, gemm_rates.get(round).copied());
                header = false;
                if case == Case::Gemm {
                    gemm_rates.push(kd.gflop_per_s);
                }
                ratios.extend(torch.as_ref().map(|t| kd.median_ms / t.median_ms));
                rows.push(serde_json::json!({ "round": round + 1, "kd": kd, "pytorch": torch }));
            }
            if ratios.len() > 1 {
                ratios.sort_by(f64::total_cmp);
                println!(
                    "{:<6} {:<10} kd/torch over {} rounds: median {:.2}, range {:.2} to {:.2}",
                    name(shape),
                    name(case),
                    ratios.len(),
                    (ratios[(ratios.len() - 1) / 2] + ratios[ratios.len() / 2]) / 2.0,
                    ratios[0],
                    ratios[ratios.len() - 1]
                );
            }
        }
    }
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "cpu": cpu_model(),
            "threads": args.threads,
            "seq_len": args.seq_len,
            "runs": args.runs,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "device": args.device.name,
            "precision": args.precision,
            "results": rows,
        });
        kd_bert::write_json_atomically(path, &report)?;
    }
    Ok(())
}

/// Times every `--model` in a fresh process of its own (and in PyTorch and ONNX Runtime with
/// `--pytorch`), prints the table and returns its rows.
fn latency_table(args: &BenchArgs) -> Result<Vec<serde_json::Value>> {
    if args.models.is_empty() {
        bail!("the latency case needs task models: give --model DIR (repeatable)");
    }
    let examples = latency::dev_sentences(&args.data, "kd bench")?;
    // Every model is checked before any is timed; those PyTorch cannot load as kd does are
    // timed in kd alone.
    let mut kd_only = Vec::new();
    for model in &args.models {
        let config = BertConfig::from_file(&kd_teacher::ModelFiles::resolve(model)?.config)?;
        let reason = match (config.int8_weights(), config.pruned_heads.is_empty()) {
            (true, _) => Some("kd's int8 layout, which transformers does not read"),
            (false, false) => Some(
                "pruned heads, which transformers 5 no longer reads (kd export --restore-heads \
                 writes a copy it loads)",
            ),
            (false, true) => None,
        };
        if let (Some(reason), Some(_)) = (reason, &args.pytorch) {
            eprintln!("{model}: timed in kd only: it has {reason}");
            kd_only.push(model);
        }
    }
    let sentences = std::env::temp_dir().join(format!("kd-latency-{}.jsonl", std::process::id()));
    let mut rows = Vec::new();
    println!(
        "{:<40} {:<12} {:>7} {:>9} {:>9} {:>9} {:>8}",
        "model", "runtime", "tokens", "mean ms", "p50 ms", "p95 ms", "MB"
    );
    for model in &args.models {
        let mut results = vec![latency::in_child(
            model,
            &args.data,
            args.threads,
            device_name(args),
        )?];
        if let Some(python) = args.pytorch.as_ref().filter(|_| !kd_only.contains(&model)) {
            latency::write_sentences(&sentences, &examples)?;
            results.extend(latency::in_python(
                python,
                model,
                &sentences,
                args.threads,
                args.data.max_seq_len,
            )?);
        }
        for result in results {
            println!(
                "{:<40} {:<12} {:>7.1} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                result.model,
                result.runtime,
                result.mean_tokens,
                result.mean_ms,
                result.p50_ms,
                result.p95_ms,
                result
                    .peak_rss_mb
                    .map_or("-".into(), |mb| format!("{mb:.0}"))
            );
            rows.push(serde_json::to_value(result)?);
        }
    }
    let _ = std::fs::remove_file(&sentences);
    Ok(rows)
}

/// The device a child bench runs on: the one named, else the CPU.
fn device_name(args: &BenchArgs) -> DeviceName {
    args.device.name.unwrap_or(DeviceName::Cpu)
}

fn common_flags(shape: Shape, case: Case, args: &BenchArgs) -> Vec<String> {
    vec![
        format!("--shapes={}", name(shape)),
        format!("--cases={}", name(case)),
        format!("--seq-len={}", args.seq_len),
        format!("--runs={}", args.runs),
        format!("--warmup={}", args.warmup),
        format!("--threads={}", args.threads),
        format!("--device={}", device_name(args)),
        format!("--precision={}", args.precision),
    ]
}

/// The command-line spelling of a shape or case.
fn name(value: impl ValueEnum) -> String {
    value.to_possible_value().unwrap().get_name().to_string()
}

fn kd_command(shape: Shape, case: Case, args: &BenchArgs) -> Result<Command> {
    kd_child(common_flags(shape, case, args), args.threads)
}

fn pytorch_command(python: &PathBuf, shape: Shape, case: Case, args: &BenchArgs) -> Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/pytorch_bench.py");
    let mut command = Command::new(python);
    command.arg(script).args(common_flags(shape, case, args));
    command
}

/// Prints one case's row: kd's times, memory and GFLOP/s (and that rate as a share of the
/// shape's gemm rate, when measured), then PyTorch's and the ratio of the medians.
fn print_row(kd: &Measurement, torch: Option<&Measurement>, header: bool, gemm_rate: Option<f64>) {
    if header {
        println!(
            "{:<6} {:<10} {:>10} {:>10} {:>8} {:>8} {:>7} {:>12} {:>12} {:>8} {:>8} {:>9}",
            "shape",
            "case",
            "kd min",
            "kd median",
            "kd MB",
            "kd GF/s",
            "of gemm",
            "torch min",
            "torch median",
            "torch MB",
            "torch GF/s",
            "kd/torch"
        );
    }
    let (torch_min, torch_median, torch_mb, torch_rate, ratio) = match torch {
        Some(t) => (
            format!("{:.1}", t.min_ms),
            format!("{:.1}", t.median_ms),
            format!("{:.0}", t.peak_rss_mb),
            format!("{:.0}", t.gflop_per_s),
            format!("{:.2}", kd.median_ms / t.median_ms),
        ),
        None => Default::default(),
    };
    let of_gemm = gemm_rate.map_or(String::new(), |rate| {
        format!("{:.0}%", 100.0 * kd.gflop_per_s / rate)
    });
    println!(
        "{:<6} {:<10} {:>10.1} {:>10.1} {:>8.0} {:>8.0} {:>7} {:>12} {:>12} {:>8} {:>8} {:>9}",
        name(kd.shape),
        name(kd.case),
        kd.min_ms,
        kd.median_ms,
        kd.peak_rss_mb,
        kd.gflop_per_s,
        of_gemm,
        torch_min,
        torch_median,
        torch_mb,
        torch_rate,
        ratio
    );
}

/// The CPU's model name, as `/proc/cpuinfo` gives it.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A random batch of full-length sequences (no padding, as the PyTorch script uses).
fn random_batch(
    batch: usize,
    seq_len: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<(BertInput, Tensor)> {
    let ids: Vec<u32> = (0..batch * seq_len)
        .map(|_| rng.random_range(1000..30522))
        .collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.random_range(0..2)).collect();
    let input = BertInput {
        input_ids: Tensor::from_vec(ids, (batch, seq_len), device)?,
        token_type_ids: Tensor::zeros((batch, seq_len), DType::U32, device)?,
        attention_mask: Tensor::ones((batch, seq_len), DType::U32, device)?,
    };
    Ok((input, Tensor::new(labels, device)?))
}

struct Model {
    params: Params,
    model: BertForSequenceClassification,
    config: BertConfig,
}

fn model(
    shape: Shape,
    layers: usize,
    seed: u64,
    device: &Device,
    precision: Precision,
) -> Result<Model> {
    let config = shape.config(layers)?;
    let params = Params::new(device);
    let mut model = BertForSequenceClassification::new(&config, 2, params.var_builder())?;
    model.bert.set_precision(precision);
    params.init_bert(config.initializer_range, seed)?;
    Ok(Model {
        params,
        model,
        config,
    })
}

const DISTILBERT_OBJECTIVE: &str = r#"
temperature = 2.0
components = [
    { kind = "soft_ce", weight = 5.0 },
    { kind = "hard", weight = 2.0 },
    { kind = "cosine", weight = 1.0 },
]
"#;

fn measure(shape: Shape, case: Case, args: &BenchArgs, device: &Device) -> Result<Measurement> {
    let (layers, .., batch) = shape.dims();
    let mut rng = StdRng::seed_from_u64(0);
    let (input, labels) = random_batch(batch, args.seq_len, &mut rng, device)?;
    let mut teacher = model(shape, layers, 1, device, args.precision)?;
    if matches!(case, Case::Inference | Case::Distill) {
        // Inference-only, as `kd eval` and `kd distill`'s teacher run it.
        teacher.model.freeze(FrozenWeights::F32)?;
    }
    let mut step: Box<dyn FnMut() -> Result<()>> = match case {
        Case::Inference => Box::new(move || {
            teacher.model.logits(&input, None, Mode::Inference)?;
            Ok(())
        }),
        Case::Train => {
            let mut optimizer = AdamW::new(teacher.params.vars(), AdamWConfig::default())?;
            Box::new(move || {
                let logits = teacher
                    .model
                    .logits(&input, None, Mode::Train { dropout: true })?;
                let loss = task_loss(TaskKind::Classification, &logits, &labels)?;
                optimizer.step(&loss.backward()?, 1e-5)?;
                Ok(())
            })
        }
        Case::Latency | Case::Read => bail!("the {case:?} case times no shape"),
        Case::Gemm => {
            let (_, hidden, _, intermediate, _) = shape.dims();
            let xs = Tensor::randn(0f32, 1.0, (batch * args.seq_len, hidden), device)?
                .to_dtype(args.precision.compute_dtype())?;
            let weight = Tensor::randn(0f32, 1.0, (intermediate, hidden), device)?;
            let bias = Tensor::zeros(intermediate, DType::F32, device)?;
            Box::new(move || {
                kd_bert::kernels::dense(&xs, &weight, &bias)?;
                Ok(())
            })
        }
        Case::Distill => {
            let student = model(shape, layers / 2, 2, device, args.precision)?;
            let objective = Objective::new(
                &toml::from_str::<ObjectiveConfig>(DISTILBERT_OBJECTIVE)?,
                &[(&teacher.config).into()],
                (&student.config).into(),
                device,
                3,
            )?;
            let mut optimizer = AdamW::new(student.params.vars(), AdamWConfig::default())?;
            Box::new(move || {
                // The DistilBERT objective reads no attention map.
                let (teacher_logits, teacher_states) =
                    teacher
                        .model
                        .forward_with(&input, Mode::Inference, AttentionMaps::Skip)?;
                let (student_logits, student_states) = student.model.forward_with(
                    &input,
                    Mode::Train { dropout: true },
                    AttentionMaps::Skip,
                )?;
                let loss = objective.compute(
                    &DistillOutputs {
                        logits: Some(&student_logits),
                        encoder: Some(&student_states),
                    },
                    &[DistillOutputs {
                        logits: Some(&teacher_logits),
                        encoder: Some(&teacher_states),
                    }],
                    &LossBatch {
                        attention_mask: &input.attention_mask,
                        labels: Some(&labels),
                        label_mask: None,
                    },
                    0,
                    1,
                )?;
                optimizer.step(&loss.total.backward()?, 1e-5)?;
                Ok(())
            })
        }
    };
    for _ in 0..args.warmup {
        step()?;
    }
    // A GPU runs asynchronously: a step ends when its kernels have.
    device.synchronize()?;
    let mut times_ms = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let start = Instant::now();
        step()?;
        device.synchronize()?;
        times_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Measurement {
        shape,
        case,
        min_ms: sorted[0],
        median_ms: sorted[sorted.len() / 2],
        times_ms,
        peak_rss_mb: peak_rss_mb(),
        gflop_per_s: 0.0,
    })
}
