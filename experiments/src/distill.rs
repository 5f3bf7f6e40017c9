//! `kd distill`: runs a recipe's stages, each an objective trained through the shared loop,
//! the teachers' logits cached across epochs and recipes (each teacher's on its own).

use crate::recipe::{Recipe, Stage, StudentSpec};
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor, Var};
use kd_bert::{BertOutput, Mode, Params};
use kd_data::{DataSpec, EncodedExample, TaskData, TaskSpec, collate};
use kd_losses::{DistillOutputs, EncoderShape, LossBatch, LossBreakdown, Objective};
use kd_teacher::{CacheOutcome, CachedStates, ModelFiles, TaskModel, TeacherCache};
use kd_train::{RunDir, StepLoss, TrainState, Trainable, TrainerConfig, train};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

const EVAL_BATCH_SIZE: usize = 128;

/// One stage's training: the student, its teachers and the objective between them.
struct Distillation<'a> {
    student: &'a TaskModel,
    /// The one whose layers are read first, then the rest of an ensemble.
    teachers: &'a [TaskModel],
    objective: &'a Objective,
    spec: &'a TaskSpec,
    train: &'a [EncodedExample],
    dev: &'a [EncodedExample],
    /// One per teacher, or none when the objective reads only the labels.
    teacher_outputs: Vec<TeacherOutputs>,
}

/// Where a teacher's outputs come from in a stage.
enum TeacherOutputs {
    /// Nothing: the objective reads only another teacher's layers.
    Unused,
    /// Its logits for every training example, when the objective needs no more of it.
    CachedLogits(Tensor),
    /// It runs beside the student on each batch, when its attention is compared (or its
    /// states would not fit [`STATES_CACHE_BYTES`]).
    Live,
    /// The hidden states it gives at the compared layers, computed once, and its logits when
    /// predictions are compared too.
    CachedStates {
        states: CachedStates,
        logits: Option<Tensor>,
    },
}

/// The most memory a teacher's cached hidden states may take (f16); beyond, it runs live.
const STATES_CACHE_BYTES: usize = 4 << 30;

impl Trainable for Distillation<'_> {
    fn parameters(&self) -> Vec<(String, Var)> {
        trained_parameters(&self.student.params, self.objective)
    }

    fn example_lengths(&self) -> Vec<usize> {
        self.train.iter().map(|e| e.ids.len()).collect()
    }

    fn loss(&self, indices: &[usize], step: usize, total_steps: usize) -> Result<StepLoss> {
        let batch = collate(self.train, indices, &Device::Cpu)?;
        let (student_logits, student_states) = self
            .student
            .model
            .forward(&batch.input, Mode::Train { dropout: true })?;
        let rows: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let rows = Tensor::new(rows, &Device::Cpu)?;
        let mut outputs = Vec::with_capacity(self.teacher_outputs.len());
        for (teacher, source) in self.teachers.iter().zip(&self.teacher_outputs) {
            outputs.push(match source {
                TeacherOutputs::Unused => (None, None),
                TeacherOutputs::CachedLogits(cached) => {
                    (Some(cached.index_select(&rows, 0)?), None)
                }
                TeacherOutputs::Live => {
                    let (logits, states) = teacher.model.forward(&batch.input, Mode::Inference)?;
                    (Some(logits), Some(states))
                }
                TeacherOutputs::CachedStates { states, logits } => {
                    let layers = states.batch(indices, batch.input.input_ids.dim(1)?)?;
                    let depth = teacher.config.num_hidden_layers;
                    let logits = logits
                        .as_ref()
                        .map(|l| l.index_select(&rows, 0))
                        .transpose()?;
                    (logits, Some(partial_output(&states.layers, layers, depth)?))
                }
            });
        }
        let teachers: Vec<DistillOutputs> = outputs
            .iter()
            .map(|(logits, states)| DistillOutputs {
                logits: logits.as_ref(),
                encoder: states.as_ref(),
            })
            .collect();
        let breakdown = self.objective.compute(
            &DistillOutputs {
                logits: Some(&student_logits),
                encoder: Some(&student_states),
            },
            &teachers,
            &LossBatch {
                attention_mask: &batch.input.attention_mask,
                labels: Some(&batch.labels),
                label_mask: batch.label_mask.as_ref(),
            },
            step,
            total_steps,
        )?;
        Ok(step_loss(breakdown))
    }

    fn reseed_dropout(&self, seed: u64) {
        self.student.model.bert.dropout_rng().reseed(seed);
    }

    fn evaluate(&self) -> Result<BTreeMap<String, f64>> {
        self.student.evaluate(self.spec, self.dev, EVAL_BATCH_SIZE)
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        self.student.save(dir)
    }
}

/// What `kd distill` prints and writes to `summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub recipe: String,
    pub task: String,
    pub metric: String,
    /// Labelled training examples (augmented ones included) and transfer-set sentences.
    pub train_examples: usize,
    pub unlabeled_examples: usize,
    /// The teacher (of an ensemble, the one whose layers are read).
    pub teacher: ModelSummary,
    /// An ensemble's teachers, that one first, with their weights; empty for one teacher.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ensemble: Vec<EnsembleMember>,
    pub student: ModelSummary,
    pub stages: Vec<StageSummary>,
    pub wall_time_s: f64,
    pub interrupted: bool,
    pub command: String,
}

#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub layers: usize,
    pub hidden: usize,
    pub params: usize,
    pub dev: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct EnsembleMember {
    pub model: String,
    pub weight: f64,
    pub dev: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct StageSummary {
    pub name: String,
    pub steps: usize,
    pub best: Option<f64>,
    pub examples_per_s: f64,
    /// Seconds spent on the teachers' logits and cached states, and whether each came from
    /// the cache (`computed`, `loaded`; `... states` for hidden states).
    pub teacher_seconds: f64,
    pub teacher_cache: Vec<String>,
}

pub struct DistillOptions<'a> {
    pub out: &'a Path,
    pub force: bool,
    pub resume: bool,
    pub cache_dir: &'a Path,
    pub shared_dir: &'a Path,
    pub command: String,
}

/// Runs every stage of `recipe` into `options.out`: stage `N-name/` folders with their logs and
/// checkpoints, the final student at the top with `summary.json`.
pub fn run(recipe: &Recipe, options: &DistillOptions, stop: &AtomicBool) -> Result<Summary> {
    let started = Instant::now();
    let specs = recipe.teacher_specs();
    let mut teachers = Vec::with_capacity(specs.len());
    let mut teacher_files = Vec::with_capacity(specs.len());
    for spec in &specs {
        let files = ModelFiles::resolve(&spec.model)?;
        let teacher = TaskModel::load_for_inference(&files, recipe.data.max_seq_len)
            .with_context(|| format!("cannot load teacher {}", spec.model))?;
        teachers.push(teacher);
        teacher_files.push(files);
    }
    check_ensemble(&specs, &teachers)?;
    let weights: Vec<f64> = specs
        .iter()
        .map(|spec| spec.weight.unwrap_or(1.0))
        .collect();
    let teacher = &teachers[0];
    let data = load_data(&recipe.data, options.shared_dir, teacher)?;
    let unlabeled = recipe
        .data
        .load_unlabeled(&teacher.tokenizer, recipe.training.seed)?;
    let student = build_student(recipe, teacher)?;
    // Labelled examples first: a stage that reads labels only trains on that prefix.
    let mut train_set = student.encode(&data.train)?;
    let labelled = train_set.len();
    train_set.extend(student.encode(&unlabeled)?);
    let dev_set = student.encode(&data.dev)?;
    let metric = data.spec.metrics[0].name().to_string();
    // Everything is loaded and checked before the output directory is touched.
    let out = output_dir(options)?;
    eprintln!(
        "{}: teacher {} ({} parameters), student {} layers x {} ({} parameters), {} labelled + {} unlabeled train / {} dev",
        recipe.name,
        describe_teachers(&specs),
        teacher.params.num_parameters(),
        student.config.num_hidden_layers,
        student.config.hidden_size,
        student.params.num_parameters(),
        labelled,
        unlabeled.len(),
        dev_set.len()
    );
    let cache = TeacherCache::new(options.cache_dir);
    let (stages, interrupted) =
        run_stages(recipe, &out, &student.params, |index, stage, stage_dir| {
            run_stage(
                recipe,
                stage,
                index,
                stage_dir,
                &student,
                &teachers,
                &teacher_files,
                &weights,
                &data.spec,
                &train_set,
                labelled,
                &dev_set,
                &cache,
                options.resume,
                stop,
            )
        })?;
    if !interrupted {
        student.save(out.path())?;
    }
    let teacher_summary = model_summary(teacher, &data.spec, &dev_set)?;
    let summary = Summary {
        recipe: recipe.name.clone(),
        task: data.spec.name.clone(),
        metric,
        train_examples: labelled,
        unlabeled_examples: unlabeled.len(),
        ensemble: if teachers.len() > 1 {
            // The first member is the teacher summarised above: evaluated once.
            let mut members = vec![teacher_summary.dev.clone()];
            for teacher in &teachers[1..] {
                members.push(teacher.evaluate(&data.spec, &dev_set, EVAL_BATCH_SIZE)?);
            }
            specs
                .iter()
                .zip(&weights)
                .zip(members)
                .map(|((spec, &weight), dev)| EnsembleMember {
                    model: spec.model.clone(),
                    weight,
                    dev,
                })
                .collect()
        } else {
            Vec::new()
        },
        teacher: teacher_summary,
        student: model_summary(&student, &data.spec, &dev_set)?,
        stages,
        wall_time_s: started.elapsed().as_secs_f64(),
        interrupted,
        command: options.command.clone(),
    };
    kd_bert::write_json_atomically(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn run_stage(
    recipe: &Recipe,
    stage: &Stage,
    index: usize,
    dir: &Path,
    student: &TaskModel,
    teachers: &[TaskModel],
    teacher_files: &[ModelFiles],
    weights: &[f64],
    spec: &TaskSpec,
    train_set: &[EncodedExample],
    labelled: usize,
    dev_set: &[EncodedExample],
    cache: &TeacherCache,
    resume: bool,
    stop: &AtomicBool,
) -> Result<(TrainState, StageSummary)> {
    // An ensemble's weights are the recipe's unless the stage gives its own.
    let mut config = stage.objective.clone();
    config
        .teacher_weights
        .get_or_insert_with(|| weights.to_vec());
    let shapes: Vec<EncoderShape> = teachers
        .iter()
        .map(|teacher| EncoderShape::from(&teacher.config))
        .collect();
    let objective = Objective::new(
        &config,
        &shapes,
        EncoderShape::from(&student.config),
        &Device::Cpu,
        recipe.training.seed.wrapping_add(index as u64),
    )
    .with_context(|| format!("stage {}", stage.name))?;
    let teacher_started = Instant::now();
    let mut teacher_outputs = Vec::new();
    let mut cache_outcomes = Vec::new();
    if !objective.needs_teacher() {
        if labelled < train_set.len() {
            eprintln!(
                "stage {}: labels only, so it trains on the {labelled} labelled examples",
                stage.name
            );
        }
    } else {
        let cached_logits = |teacher: &TaskModel, files: &ModelFiles, outcomes: &mut Vec<_>| {
            let started = Instant::now();
            let (logits, outcome) =
                cache.logits(teacher, &files.weights, train_set, EVAL_BATCH_SIZE)?;
            report_cache(stage, "logits", files, outcome, started);
            outcomes.push(format!("{outcome:?}").to_lowercase());
            anyhow::Ok(logits)
        };
        for (index, (teacher, files)) in teachers.iter().zip(teacher_files).enumerate() {
            // The first teacher's layers are read; the others give predictions at most.
            let outputs = if index == 0 && objective.needs_teacher_states() {
                match cacheable_layers(&objective, teacher, train_set) {
                    Some(layers) => {
                        // The pass that computes the states caches the logits as well.
                        let started = Instant::now();
                        let (states, outcome) = cache.states(
                            teacher,
                            &files.weights,
                            train_set,
                            &layers,
                            EVAL_BATCH_SIZE,
                        )?;
                        report_cache(stage, "hidden states", files, outcome, started);
                        cache_outcomes.push(format!("{outcome:?} states").to_lowercase());
                        let logits = match objective.needs_teacher_logits() {
                            true => Some(cached_logits(teacher, files, &mut cache_outcomes)?),
                            false => None,
                        };
                        TeacherOutputs::CachedStates { states, logits }
                    }
                    None => TeacherOutputs::Live,
                }
            } else if objective.needs_teacher_logits() {
                TeacherOutputs::CachedLogits(cached_logits(teacher, files, &mut cache_outcomes)?)
            } else {
                TeacherOutputs::Unused
            };
            teacher_outputs.push(outputs);
        }
    }
    let teacher_seconds = teacher_started.elapsed().as_secs_f64();
    let train_set = if teacher_outputs.is_empty() {
        &train_set[..labelled]
    } else {
        train_set
    };
    let task = Distillation {
        student,
        teachers,
        objective: &objective,
        spec,
        train: train_set,
        dev: dev_set,
        teacher_outputs,
    };
    let state = train_stage(
        recipe,
        stage,
        dir,
        &task,
        spec.metrics[0].name(),
        false,
        resume,
        stop,
    )?;
    let summary = StageSummary {
        name: stage.name.clone(),
        steps: state.step,
        best: state.best_value,
        examples_per_s: state.examples_per_s(),
        teacher_seconds,
        teacher_cache: cache_outcomes,
    };
    Ok((state, summary))
}

/// The teacher layers to cache for `objective`, when it compares hidden states only and
/// they fit [`STATES_CACHE_BYTES`] in f16.
fn cacheable_layers(
    objective: &Objective,
    teacher: &TaskModel,
    train_set: &[EncodedExample],
) -> Option<Vec<usize>> {
    let layers = objective.teacher_hidden_layers()?;
    let tokens: usize = train_set.iter().map(|e| e.ids.len()).sum();
    let bytes = tokens * teacher.config.hidden_size * 2 * layers.len();
    if bytes > STATES_CACHE_BYTES {
        eprintln!(
            "the teacher's compared states would take {:.1} GB: running it beside the student",
            bytes as f64 / 1e9
        );
        return None;
    }
    Some(layers)
}

fn report_cache(
    stage: &Stage,
    what: &str,
    files: &ModelFiles,
    outcome: CacheOutcome,
    started: Instant,
) {
    eprintln!(
        "stage {}: {what} of teacher {} {} in {:.1} s",
        stage.name,
        files.dir.display(),
        match outcome {
            CacheOutcome::Computed => "computed and cached",
            CacheOutcome::Loaded => "loaded from the cache",
        },
        started.elapsed().as_secs_f64()
    );
}

/// A teacher output holding only the cached layers: the others are empty placeholders, which
/// the objective never reads (it compares the cached layers only).
fn partial_output(layers: &[usize], states: Vec<Tensor>, depth: usize) -> Result<BertOutput> {
    let empty = Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu)?;
    let mut all = vec![empty.clone(); depth + 1];
    for (&layer, state) in layers.iter().zip(states) {
        all[layer] = state;
    }
    let embeddings = all.remove(0);
    Ok(BertOutput {
        embeddings,
        hidden_states: all,
        attention_scores: vec![empty; depth],
        attention_probs: Vec::new(),
        pooled: None,
    })
}

/// The run's output directory: created (refusing a non-empty one without `force`), or opened
/// to resume.
pub(crate) fn output_dir(options: &DistillOptions) -> Result<RunDir> {
    if options.resume {
        RunDir::open(options.out)
    } else {
        RunDir::create(options.out, options.force)
    }
}

/// Runs `recipe`'s stages in order, each by `run_stage(index, stage, dir)` into its folder
/// `N-name/` of `out`, the next starting from the model the previous one kept (loaded into
/// `student`). Returns what each stage reported, and whether an interruption stopped them.
pub(crate) fn run_stages<S>(
    recipe: &Recipe,
    out: &RunDir,
    student: &Params,
    mut run_stage: impl FnMut(usize, &Stage, &Path) -> Result<(TrainState, S)>,
) -> Result<(Vec<S>, bool)> {
    let mut reports = Vec::new();
    for (index, stage) in recipe.stages.iter().enumerate() {
        let stage_dir = out.join(&format!("{}-{}", index + 1, stage.name));
        let (state, report) = run_stage(index, stage, &stage_dir)?;
        reports.push(report);
        if state.interrupted {
            return Ok((reports, true));
        }
        student.load(&stage_dir.join("model.safetensors"), |_| false)?;
    }
    Ok((reports, false))
}

/// A breakdown of the objective as the training loop logs it.
pub(crate) fn step_loss(breakdown: LossBreakdown) -> StepLoss {
    StepLoss {
        total: breakdown.total,
        components: breakdown
            .components
            .into_iter()
            .map(|(name, value)| (name, value as f64))
            .collect(),
    }
}

/// Trains one stage of `recipe` into `dir` (its log, checkpoint and kept model), or, with
/// `resume`, continues it from its checkpoint; a stage already complete is not trained again.
/// `metric` (a dev metric, or a loss when `minimize`) chooses the model kept.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_stage(
    recipe: &Recipe,
    stage: &Stage,
    dir: &Path,
    task: &dyn Trainable,
    metric: &str,
    minimize: bool,
    resume: bool,
    stop: &AtomicBool,
) -> Result<TrainState> {
    let done = dir.join("stage.json");
    let training = &recipe.training;
    let config = TrainerConfig {
        epochs: stage.epochs,
        batch_size: training.batch_size,
        lr: stage.lr.unwrap_or(training.lr),
        warmup: training.warmup,
        weight_decay: training.weight_decay,
        max_steps: training.max_steps,
        seed: training.seed,
        eval_every: training.eval_every,
        keep: stage.keep,
        minimize,
        ..TrainerConfig::default()
    };
    if resume && done.is_file() {
        eprintln!("stage {}: already complete", stage.name);
        let text = std::fs::read_to_string(dir.join("checkpoint/state.json"))?;
        return Ok(serde_json::from_str(&text)?);
    }
    let stage_resume = resume && dir.join("checkpoint/state.json").is_file();
    let stage_dir = if stage_resume {
        RunDir::open(dir)?
    } else {
        RunDir::create(dir, true)?
    };
    let state = train(task, &config, metric, &stage_dir, stage_resume, stop)?;
    if !state.interrupted {
        kd_bert::write_atomically(&done, |tmp| Ok(std::fs::write(tmp, "{}")?))?;
    }
    Ok(state)
}

/// A student's parameters and its objective's projections (`objective.*`), which train
/// together.
pub(crate) fn trained_parameters(student: &Params, objective: &Objective) -> Vec<(String, Var)> {
    let projections = objective.params().vars().into_iter();
    student
        .vars()
        .into_iter()
        .chain(projections.map(|(name, var)| (format!("objective.{name}"), var)))
        .collect()
}

/// The teachers, and for an ensemble which one's layers are read.
fn describe_teachers(specs: &[&crate::recipe::TeacherSpec]) -> String {
    match specs {
        [only] => only.model.clone(),
        [first, ..] => format!(
            "ensemble of {} ({}; layers from {})",
            specs.len(),
            specs
                .iter()
                .map(|spec| spec.model.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            first.model
        ),
        [] => String::new(),
    }
}

/// An ensemble's teachers must answer the same task in the same terms: the same kind of head,
/// the same labels in the same order, and the same vocabulary (they read the same token ids).
fn check_ensemble(specs: &[&crate::recipe::TeacherSpec], teachers: &[TaskModel]) -> Result<()> {
    let (first, first_spec) = (&teachers[0], specs[0]);
    for (teacher, spec) in teachers.iter().zip(specs).skip(1) {
        if teacher.task_kind() != first.task_kind() || teacher.labels != first.labels {
            bail!(
                "teachers {} and {} answer differently: labels {:?} and {:?}",
                first_spec.model,
                spec.model,
                first.labels,
                teacher.labels
            );
        }
        if teacher.tokenizer.vocab() != first.tokenizer.vocab() {
            bail!(
                "teachers {} and {} have different vocabularies: an ensemble reads one set of \
                 token ids",
                first_spec.model,
                spec.model
            );
        }
    }
    for spec in specs {
        if let Some(weight) = spec.weight.filter(|w| !(*w > 0.0 && w.is_finite())) {
            bail!("teacher {}: weight {weight} must be positive", spec.model);
        }
    }
    Ok(())
}

/// The recipe's labelled data, with the teacher's class names in the teacher's order.
fn load_data(spec: &DataSpec, shared_dir: &Path, teacher: &TaskModel) -> Result<TaskData> {
    let task = spec.task_spec()?;
    if task.kind != teacher.task_kind() {
        bail!(
            "the teacher is a {:?} model but task {} is {:?}",
            teacher.task_kind(),
            task.name,
            task.kind
        );
    }
    spec.load(shared_dir, teacher.dataset_labels())
}

fn build_student(recipe: &Recipe, teacher: &TaskModel) -> Result<TaskModel> {
    let seed = recipe.training.seed;
    match &recipe.student {
        StudentSpec::Distilbert {
            layers,
            copy_head,
            from,
        } => {
            let layers = layers
                .clone()
                .unwrap_or_else(|| kd_student::every_other_layer(teacher.config.num_hidden_layers));
            let Some(from) = from else {
                return kd_student::distilbert_student(teacher, &layers, *copy_head, seed);
            };
            let source = TaskModel::from_backbone(
                &ModelFiles::resolve(from)?,
                teacher.task_kind(),
                &teacher.dataset_labels(),
                seed,
                teacher.tokenizer.max_len(),
            )?;
            kd_student::check_source(teacher, &source)
                .with_context(|| format!("cannot build the student from {from}"))?;
            kd_student::distilbert_student(&source, &layers, false, seed)
        }
        StudentSpec::Tinybert { shape, init: None } => {
            kd_student::tinybert_student(teacher, *shape, seed)
        }
        StudentSpec::Tinybert {
            shape,
            init: Some(init),
        } => {
            let files = ModelFiles::resolve(init)?;
            let student = TaskModel::from_backbone(
                &files,
                teacher.task_kind(),
                &teacher.dataset_labels(),
                seed,
                recipe.data.max_seq_len,
            )?;
            let config = &student.config;
            if (config.num_hidden_layers, config.hidden_size) != (shape.layers, shape.hidden) {
                bail!(
                    "student checkpoint {init} has {} layers x {}, the recipe says {} x {}",
                    config.num_hidden_layers,
                    config.hidden_size,
                    shape.layers,
                    shape.hidden
                );
            }
            Ok(student)
        }
    }
}

fn model_summary(
    model: &TaskModel,
    spec: &TaskSpec,
    dev: &[EncodedExample],
) -> Result<ModelSummary> {
    Ok(ModelSummary {
        layers: model.config.num_hidden_layers,
        hidden: model.config.hidden_size,
        params: model.params.num_parameters(),
        dev: model.evaluate(spec, dev, EVAL_BATCH_SIZE)?,
    })
}
