//! `kd distill`: runs a recipe's stages, each an objective trained through the shared loop,
//! the teachers' logits cached across epochs and recipes (each teacher's on its own).

use crate::recipe::{Recipe, Stage, StudentSpec, TeacherSpec};
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor, Var};
use kd_bert::{BertConfig, BertOutput, Mode, Params};
use kd_data::{DataSpec, EncodedExample, TaskData, TaskSpec, collate};
use kd_losses::{DistillOutputs, EncoderShape, LossBatch, LossBreakdown, Objective};
use kd_teacher::{CacheOutcome, CachedStates, ModelFiles, TaskModel, TeacherCache};
use kd_train::{Interrupted, RunDir, StepLoss, TrainState, Trainable, TrainerConfig, train};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

const EVAL_BATCH_SIZE: usize = 128;

/// One stage's training: the student, its teachers and the objective between them.
pub(crate) struct Distillation<'a> {
    student: &'a TaskModel,
    /// The one whose layers are read first, then the rest of an ensemble.
    teachers: &'a [TaskModel],
    objective: &'a Objective,
    spec: &'a TaskSpec,
    train: &'a [EncodedExample],
    dev: &'a [EncodedExample],
    /// One per teacher, or none when the objective reads only the labels.
    teacher_outputs: &'a [TeacherOutputs],
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

impl Distillation<'_> {
    /// The objective's own trained parameters (projections), by their names there.
    pub(crate) fn projections(&self) -> Vec<(String, Var)> {
        self.objective.params().vars()
    }

    /// The task's first metric, which chooses the model kept.
    pub(crate) fn metric_name(&self) -> &str {
        self.spec.metrics[0].name()
    }
}

impl Trainable for Distillation<'_> {
    fn parameters(&self) -> Vec<(String, Var)> {
        trained_parameters(&self.student.params, self.objective)
    }

    fn example_lengths(&self) -> Vec<usize> {
        self.train.iter().map(|e| e.ids.len()).collect()
    }

    fn loss(&self, indices: &[usize], step: usize, total_steps: usize) -> Result<StepLoss> {
        let device = self.student.params.device();
        let batch = collate(self.train, indices, device)?;
        let mode = Mode::Train { dropout: true };
        let model = &self.student.model;
        // Without layer components the student's logits suffice: its last layer at [CLS] only.
        let maps = self.objective.attention_maps();
        let (student_logits, student_states) = if self.objective.needs_teacher_states() {
            let (logits, states) = model.forward_with(&batch.input, mode, maps)?;
            (logits, Some(states))
        } else {
            (model.logits(&batch.input, None, mode)?, None)
        };
        // The cached outputs stay in host memory: the batch's rows move to the device.
        let rows: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let rows = Tensor::new(rows, &Device::Cpu)?;
        let rows_of = |cached: &Tensor| cached.index_select(&rows, 0)?.to_device(device);
        let mut outputs = Vec::with_capacity(self.teacher_outputs.len());
        for (teacher, source) in self.teachers.iter().zip(self.teacher_outputs) {
            outputs.push(match source {
                TeacherOutputs::Unused => (None, None),
                TeacherOutputs::CachedLogits(cached) => (Some(rows_of(cached)?), None),
                TeacherOutputs::Live => {
                    let (logits, states) =
                        teacher
                            .model
                            .forward_with(&batch.input, Mode::Inference, maps)?;
                    (Some(logits), Some(states))
                }
                TeacherOutputs::CachedStates { states, logits } => {
                    let layers = states.batch(indices, batch.input.input_ids.dim(1)?, device)?;
                    let depth = teacher.config.num_hidden_layers;
                    let logits = logits.as_ref().map(rows_of).transpose()?;
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
                encoder: student_states.as_ref(),
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
    /// The recipe's `name`.
    pub recipe: String,
    /// The task's name: GLUE's, or the recipe's own `data.task`.
    pub task: String,
    /// The task's first metric, which chose each stage's kept model (a key of the `dev` maps).
    pub metric: String,
    /// Labelled training examples, augmented ones included.
    pub train_examples: usize,
    /// Transfer-set sentences (`data.unlabeled`) that only the teachers label; 0 without a
    /// transfer set.
    pub unlabeled_examples: usize,
    /// The teacher (of an ensemble, the one whose layers are read).
    pub teacher: ModelSummary,
    /// An ensemble's teachers, that one first, with their weights; empty for one teacher.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ensemble: Vec<EnsembleMember>,
    /// The student as trained, on dev.
    pub student: ModelSummary,
    /// Each stage run, in the recipe's order (up to the interrupted one).
    pub stages: Vec<StageSummary>,
    /// Seconds this call took, from loading the models to the final evaluations.
    pub wall_time_s: f64,
    /// Whether a stop request ended the run early: the stage's checkpoint is saved for
    /// `--resume`, and no final student is written.
    pub interrupted: bool,
    /// The command line (or the caller) that started the run.
    pub command: String,
}

/// A model's shape, size and dev metrics.
#[derive(Debug, Serialize)]
pub struct ModelSummary {
    /// Encoder layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Parameters, embeddings and task heads included.
    pub params: usize,
    /// The task's dev metrics by name, not in percent (0.91 for 91%); empty for a multi-task
    /// student as a whole, whose metrics are per task.
    pub dev: BTreeMap<String, f64>,
}

/// One teacher of an ensemble.
#[derive(Debug, Serialize)]
pub struct EnsembleMember {
    /// The teacher as the recipe names it: hub id or directory.
    pub model: String,
    /// Its weight in the ensemble's average as the recipe gives it (1 by default), before
    /// normalising.
    pub weight: f64,
    /// Its own dev metrics by name.
    pub dev: BTreeMap<String, f64>,
}

/// What one stage did.
#[derive(Debug, Serialize)]
pub struct StageSummary {
    /// The stage's name; its folder is `N-name/`.
    pub name: String,
    /// Updates trained, over every call of a resumed run.
    pub steps: usize,
    /// The best value of the metric that chooses the kept model (the task's first metric;
    /// `mean` for a multi-task student); `None` when the stage never evaluated.
    pub best: Option<f64>,
    /// That metric's value for the model the stage kept and handed on: `best`, or with
    /// `keep = "last"` the last evaluation's.
    pub kept: Option<f64>,
    /// Training examples a second, evaluation excluded.
    pub examples_per_s: f64,
    /// Seconds spent getting the teachers' logits and cached states, computed or loaded.
    pub teacher_seconds: f64,
    /// Where each teacher output came from: `computed` or `loaded` (for hidden states,
    /// `computed states` or `loaded states`), each prefixed by `TASK: ` in a multi-task run;
    /// none for a teacher that runs live or is not read.
    pub teacher_cache: Vec<String>,
}

/// Where and how a recipe runs: its output directory, the caches, the shared data and the
/// device.
pub struct DistillOptions<'a> {
    /// The run's output directory: each stage's folder `N-name/`, then the final model and
    /// `summary.json`.
    pub out: &'a Path,
    /// Write into `out` even when it is not empty.
    pub force: bool,
    /// Continue the interrupted run in `out` from its checkpoints; refused when the recipe or
    /// its files changed since it began.
    pub resume: bool,
    /// Where teacher outputs (and tokenised corpora) are cached, shared by runs with the same
    /// teacher and data.
    pub cache_dir: &'a Path,
    /// The shared data (GLUE's files under `data/glue`).
    pub shared_dir: &'a Path,
    /// The command line recorded in `summary.json`.
    pub command: String,
    /// Where the teachers and the student run.
    pub device: Device,
}

/// Runs every stage of `recipe` into `options.out`: stage `N-name/` folders with their logs and
/// checkpoints, the final student at the top with `summary.json`.
pub fn run(recipe: &Recipe, options: &DistillOptions, stop: &AtomicBool) -> Result<Summary> {
    let started = Instant::now();
    let teachers = Teachers::load(recipe, &options.device)?;
    let teacher = teachers.main();
    let data = load_data(&recipe.data, options.shared_dir, teacher)?;
    let student = build_student(recipe, teacher)?;
    let examples = Examples::encode(recipe, &data, teacher, &student)?;
    check_stages(recipe, &student, &teachers, Stage::clone)?;
    let metric = data.spec.metrics[0].name().to_string();
    // Everything is loaded and checked before the output directory is touched.
    let out = output_dir(recipe, options)?;
    eprintln!(
        "{}: teacher {} ({} parameters), student {} layers x {} ({} parameters), {}",
        recipe.name,
        teachers.describe(),
        teacher.params.num_parameters(),
        student.config.num_hidden_layers,
        student.config.hidden_size,
        student.params.num_parameters(),
        examples.describe()
    );
    let cache = TeacherCache::new(options.cache_dir, stop);
    let (stages, interrupted) =
        run_stages(recipe, &out, &student.params, |index, stage, stage_dir| {
            let inputs =
                StageInputs::prepare(recipe, stage, index, &student, &teachers, &examples, &cache)?;
            let task = inputs.distillation(&student, &teachers, &data.spec, &examples);
            let state = train_stage(
                recipe,
                stage,
                stage_dir,
                &task,
                &metric,
                false,
                options.resume,
                stop,
            )?;
            let summary = inputs.summary(stage, &state);
            Ok((state, summary))
        })?;
    if !interrupted {
        student.save(out.path())?;
    }
    let (teacher_summary, ensemble) = teachers.summaries(&data.spec, &examples.dev)?;
    let summary = Summary {
        recipe: recipe.name.clone(),
        task: data.spec.name.clone(),
        metric,
        train_examples: examples.labelled,
        unlabeled_examples: examples.unlabeled,
        ensemble,
        teacher: teacher_summary,
        student: model_summary(&student, &data.spec, &examples.dev)?,
        stages,
        wall_time_s: started.elapsed().as_secs_f64(),
        interrupted,
        command: options.command.clone(),
    };
    kd_bert::write_json_atomically(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// A recipe's teachers, loaded to answer and checked as an ensemble; the one whose layers
/// are read first.
pub(crate) struct Teachers {
    specs: Vec<TeacherSpec>,
    models: Vec<TaskModel>,
    files: Vec<ModelFiles>,
    weights: Vec<f64>,
}

impl Teachers {
    pub(crate) fn load(recipe: &Recipe, device: &Device) -> Result<Self> {
        let specs: Vec<TeacherSpec> = recipe.teacher_specs().into_iter().cloned().collect();
        let mut models = Vec::with_capacity(specs.len());
        let mut files = Vec::with_capacity(specs.len());
        for spec in &specs {
            let resolved = ModelFiles::resolve(&spec.model)?;
            let mut model =
                TaskModel::load_for_inference(&resolved, recipe.data.max_seq_len, device)
                    .with_context(|| format!("cannot load teacher {}", spec.model))?;
            model.set_precision(recipe.training.precision);
            models.push(model);
            files.push(resolved);
        }
        check_ensemble(&specs, &models)?;
        let weights = specs
            .iter()
            .map(|spec| spec.weight.unwrap_or(1.0))
            .collect();
        Ok(Self {
            specs,
            models,
            files,
            weights,
        })
    }

    /// The teacher whose layers are read (and which a DistilBERT-style student copies).
    pub(crate) fn main(&self) -> &TaskModel {
        &self.models[0]
    }

    /// The teachers, and for an ensemble which one's layers are read.
    pub(crate) fn describe(&self) -> String {
        let models: Vec<&str> = self.specs.iter().map(|spec| spec.model.as_str()).collect();
        match models[..] {
            [only] => only.to_string(),
            _ => format!(
                "ensemble of {} ({}; layers from {})",
                models.len(),
                models.join(", "),
                models[0]
            ),
        }
    }

    /// The main teacher's summary on `dev`, and an ensemble's members (none for one teacher).
    pub(crate) fn summaries(
        &self,
        spec: &TaskSpec,
        dev: &[EncodedExample],
    ) -> Result<(ModelSummary, Vec<EnsembleMember>)> {
        let main = model_summary(self.main(), spec, dev)?;
        if self.models.len() == 1 {
            return Ok((main, Vec::new()));
        }
        // The first member is the main teacher: evaluated once.
        let mut members = vec![main.dev.clone()];
        for teacher in &self.models[1..] {
            members.push(teacher.evaluate(spec, dev, EVAL_BATCH_SIZE)?);
        }
        let ensemble = self
            .specs
            .iter()
            .zip(&self.weights)
            .zip(members)
            .map(|((spec, &weight), dev)| EnsembleMember {
                model: spec.model.clone(),
                weight,
                dev,
            })
            .collect();
        Ok((main, ensemble))
    }
}

/// A task's examples encoded for the student: labelled ones first, then the transfer set's
/// (a stage that reads labels only trains on that prefix); and the dev set.
pub(crate) struct Examples {
    pub(crate) train: Vec<EncodedExample>,
    pub(crate) labelled: usize,
    pub(crate) unlabeled: usize,
    pub(crate) dev: Vec<EncodedExample>,
}

impl Examples {
    pub(crate) fn encode(
        recipe: &Recipe,
        data: &TaskData,
        teacher: &TaskModel,
        student: &TaskModel,
    ) -> Result<Self> {
        let unlabeled = recipe
            .data
            .load_unlabeled(&teacher.tokenizer, recipe.training.seed)?;
        let mut train = student.encode(&data.train)?;
        let labelled = train.len();
        train.extend(student.encode(&unlabeled)?);
        Ok(Self {
            train,
            labelled,
            unlabeled: unlabeled.len(),
            dev: student.encode(&data.dev)?,
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} labelled + {} unlabeled train / {} dev",
            self.labelled,
            self.unlabeled,
            self.dev.len()
        )
    }
}

/// A stage's objective for one task, where each teacher's outputs come from, and how many
/// training examples it reads.
pub(crate) struct StageInputs {
    objective: Objective,
    teacher_outputs: Vec<TeacherOutputs>,
    /// Whether each teacher output came from the cache, for the summary.
    cache_outcomes: Vec<String>,
    teacher_seconds: f64,
    train_len: usize,
}

/// `stage`'s objective (the `index`th) between `student` and `teachers`.
fn stage_objective(
    recipe: &Recipe,
    stage: &Stage,
    index: usize,
    student: &TaskModel,
    teachers: &Teachers,
) -> Result<Objective> {
    // An ensemble's weights are the recipe's unless the stage gives its own.
    let mut config = stage.objective.clone();
    config
        .teacher_weights
        .get_or_insert_with(|| teachers.weights.clone());
    let shapes: Vec<EncoderShape> = teachers
        .models
        .iter()
        .map(|teacher| EncoderShape::from(&teacher.config))
        .collect();
    let context = || format!("stage {}", stage.name);
    let objective = Objective::new(
        &config,
        &shapes,
        EncoderShape::from(&student.config),
        student.params.device(),
        recipe.training.seed.wrapping_add(index as u64),
    )
    .with_context(context)?;
    check_head_counts(&objective, &student.config, &teachers.main().config)
        .with_context(context)?;
    Ok(objective)
}

/// Refuses a component that compares attention head by head between layers left with
/// different numbers of heads by pruning (`pruned_heads`) in the student or the teacher.
fn check_head_counts(
    objective: &Objective,
    student: &BertConfig,
    teacher: &BertConfig,
) -> Result<()> {
    for (name, s, t) in objective.head_pairs() {
        let (student_heads, teacher_heads) =
            (student.heads_in_layer(s - 1), teacher.heads_in_layer(t - 1));
        if student_heads != teacher_heads {
            bail!(
                "{name} compares the attention heads of student layer {s} (heads: \
                 {student_heads}) with those of teacher layer {t} (heads: {teacher_heads}), \
                 which pruning left different: map layers with as many heads, or compare \
                 hidden states instead"
            );
        }
    }
    Ok(())
}

/// Builds every stage's objective (each for `student` as `stage_of` gives it), so that a
/// mistake in a later stage, such as a layer mapping outside either model, fails before the
/// first stage trains.
pub(crate) fn check_stages(
    recipe: &Recipe,
    student: &TaskModel,
    teachers: &Teachers,
    stage_of: impl Fn(&Stage) -> Stage,
) -> Result<()> {
    for (index, stage) in recipe.stages.iter().enumerate() {
        stage_objective(recipe, &stage_of(stage), index, student, teachers)?;
    }
    Ok(())
}

impl StageInputs {
    /// Builds `stage`'s objective between `student` and `teachers` and gets the teachers'
    /// outputs it needs: cached logits, cached states, or the teacher run live.
    pub(crate) fn prepare(
        recipe: &Recipe,
        stage: &Stage,
        index: usize,
        student: &TaskModel,
        teachers: &Teachers,
        examples: &Examples,
        cache: &TeacherCache,
    ) -> Result<Self> {
        let objective = stage_objective(recipe, stage, index, student, teachers)?;
        let started = Instant::now();
        let train_set = &examples.train;
        let mut teacher_outputs = Vec::new();
        let mut cache_outcomes = Vec::new();
        if !objective.needs_teacher() {
            if examples.labelled < train_set.len() {
                eprintln!(
                    "stage {}: labels only, so it trains on the {} labelled examples",
                    stage.name, examples.labelled
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
            for (index, (teacher, files)) in teachers.models.iter().zip(&teachers.files).enumerate()
            {
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
                    TeacherOutputs::CachedLogits(cached_logits(
                        teacher,
                        files,
                        &mut cache_outcomes,
                    )?)
                } else {
                    TeacherOutputs::Unused
                };
                teacher_outputs.push(outputs);
            }
        }
        let train_len = match teacher_outputs.is_empty() {
            true => examples.labelled,
            false => train_set.len(),
        };
        Ok(Self {
            objective,
            teacher_outputs,
            cache_outcomes,
            teacher_seconds: started.elapsed().as_secs_f64(),
            train_len,
        })
    }

    /// The stage's training between `student` and `teachers` on `examples`.
    pub(crate) fn distillation<'a>(
        &'a self,
        student: &'a TaskModel,
        teachers: &'a Teachers,
        spec: &'a TaskSpec,
        examples: &'a Examples,
    ) -> Distillation<'a> {
        Distillation {
            student,
            teachers: &teachers.models,
            objective: &self.objective,
            spec,
            train: &examples.train[..self.train_len],
            dev: &examples.dev,
            teacher_outputs: &self.teacher_outputs,
        }
    }

    /// What the stage reports, from the state it ended in.
    pub(crate) fn summary(&self, stage: &Stage, state: &TrainState) -> StageSummary {
        StageSummary::new(
            stage,
            state,
            self.teacher_seconds,
            self.cache_outcomes.clone(),
        )
    }

    /// Seconds spent on the teachers' outputs, and where each came from.
    pub(crate) fn teacher_costs(&self) -> (f64, &[String]) {
        (self.teacher_seconds, &self.cache_outcomes)
    }
}

impl StageSummary {
    pub(crate) fn new(
        stage: &Stage,
        state: &TrainState,
        teacher_seconds: f64,
        teacher_cache: Vec<String>,
    ) -> Self {
        Self {
            name: stage.name.clone(),
            steps: state.step,
            best: state.best_value,
            kept: state.kept_value,
            examples_per_s: state.examples_per_s(),
            teacher_seconds,
            teacher_cache,
        }
    }
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
        attention_projections: Vec::new(),
        pooled: None,
    })
}

/// The run's output directory: created (refusing a non-empty one without `force`), or opened
/// to resume, refusing a run whose recipe or files changed since it began.
pub(crate) fn output_dir(recipe: &Recipe, options: &DistillOptions) -> Result<RunDir> {
    let inputs = recipe.run_inputs(options.shared_dir)?;
    RunDir::for_run(options.out, options.force, options.resume, &inputs)
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
        let (state, report) = match run_stage(index, stage, &stage_dir) {
            // Stopped before the stage trained (its teacher outputs half computed): nothing of
            // it to keep, and `--resume` begins it again.
            Err(error) if Interrupted::caused(&error) => return Ok((reports, true)),
            result => result?,
        };
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
    let config = TrainerConfig {
        minimize,
        ..recipe.trainer_config(stage)
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

/// An ensemble's teachers must answer the same task in the same terms: the same kind of head,
/// the same labels in the same order, and the same vocabulary (they read the same token ids).
fn check_ensemble(specs: &[TeacherSpec], teachers: &[TaskModel]) -> Result<()> {
    let (first, first_spec) = (&teachers[0], &specs[0]);
    for (teacher, spec) in teachers.iter().zip(specs).skip(1) {
        if !answer_alike(first, teacher) {
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
pub(crate) fn load_data(
    spec: &DataSpec,
    shared_dir: &Path,
    teacher: &TaskModel,
) -> Result<TaskData> {
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

/// The recipe's student, computing in the recipe's precision.
pub(crate) fn build_student(recipe: &Recipe, teacher: &TaskModel) -> Result<TaskModel> {
    let mut student = student_of(recipe, teacher)?;
    student.set_precision(recipe.training.precision);
    Ok(student)
}

fn student_of(recipe: &Recipe, teacher: &TaskModel) -> Result<TaskModel> {
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
                teacher.params.device(),
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
                teacher.params.device(),
            )?;
            kd_student::check_init_shape(init, &student.config, *shape)?;
            kd_student::check_vocabulary(&teacher.tokenizer, &student.tokenizer)
                .with_context(|| format!("cannot start the student from {init}"))?;
            Ok(student)
        }
        StudentSpec::Model { model } => model_student(model, recipe, teacher)
            .with_context(|| format!("cannot take {model} as the student")),
    }
}

/// The task model in `model` as the student, as it is (a pruned model keeps its pruned heads
/// and feed-forward size): it must read the teacher's token ids and answer with its labels.
fn model_student(model: &str, recipe: &Recipe, teacher: &TaskModel) -> Result<TaskModel> {
    let files = ModelFiles::resolve(model)?;
    let student = TaskModel::load(&files, recipe.data.max_seq_len, teacher.params.device())?;
    kd_student::check_vocabulary(&teacher.tokenizer, &student.tokenizer)?;
    check_same_labels(teacher, &student)?;
    Ok(student)
}

/// Whether two task models answer in the same terms: the same kind of head, the same labels
/// in the same order.
fn answer_alike(a: &TaskModel, b: &TaskModel) -> bool {
    a.task_kind() == b.task_kind() && a.labels == b.labels
}

/// Refuses a student whose task head answers another task than the teacher's: another kind
/// of head, or other labels (their count, names or order).
fn check_same_labels(teacher: &TaskModel, student: &TaskModel) -> Result<()> {
    if !answer_alike(teacher, student) {
        bail!(
            "the student's task head answers with {} labels {:?} ({:?}), the teacher's with {} \
             labels {:?} ({:?}): distil a model fine-tuned on the teacher's task",
            student.labels.len(),
            student.labels,
            student.task_kind(),
            teacher.labels.len(),
            teacher.labels,
            teacher.task_kind()
        );
    }
    Ok(())
}

pub(crate) fn model_summary(
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
