//! `kd distill` with `[[tasks]]`: MT-DNN's multi-task distillation. One student encoder with a
//! head per task; each batch comes from one task and trains against that task's teachers and
//! labels (a regression task compares the teachers' scores by MSE where the stage says
//! `soft_ce` or `kl`); the model kept is the best by the mean of the tasks' first dev metrics.

use crate::distill::{
    DistillOptions, Distillation, EnsembleMember, Examples, ModelSummary, StageInputs,
    StageSummary, Teachers, build_student, check_stages, load_data, model_summary, output_dir,
    run_stages, train_stage,
};
use crate::recipe::{Recipe, Stage};
use anyhow::{Context, Result, bail};
use candle_core::Var;
use kd_data::{TaskData, TaskKind, TextTokenizer};
use kd_teacher::{MultiTaskModel, TaskHead, TeacherCache};
use kd_train::{StepLoss, Trainable};
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// The dev metric the best model is chosen by: the mean of each task's first metric.
const MEAN: &str = "mean";

/// One task of the recipe, loaded.
struct Task {
    name: String,
    weight: f64,
    recipe: Recipe,
    teachers: Teachers,
    data: TaskData,
}

impl Task {
    /// `stage` as this task trains it: a regression task's predictions compared by MSE.
    fn stage(&self, stage: &Stage) -> Stage {
        match self.data.spec.kind {
            TaskKind::Classification => stage.clone(),
            TaskKind::Regression => Stage {
                objective: stage.objective.for_regression(),
                ..stage.clone()
            },
        }
    }
}

/// What a multi-task `kd distill` prints and writes to `summary.json`.
#[derive(Debug, Serialize)]
pub struct MultiTaskSummary {
    /// The recipe's `name`.
    pub recipe: String,
    /// Each task, in the recipe's order.
    pub tasks: Vec<TaskSummary>,
    /// The mean over tasks of each one's first dev metric, the student's.
    pub student_mean: f64,
    /// The same mean for the teachers: each task's (main) teacher on its own metric.
    pub teacher_mean: f64,
    /// The whole student: one encoder, every head.
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

/// One task of a multi-task run: its data, teachers and the student's head on it.
#[derive(Debug, Serialize)]
pub struct TaskSummary {
    /// The head's name (the recipe's, or the task's by default); its model is `tasks/NAME/`.
    pub name: String,
    /// The data's task name.
    pub task: String,
    /// The task's first metric, whose mean over tasks chooses the kept model.
    pub metric: String,
    /// Labelled training examples, augmented ones included.
    pub train_examples: usize,
    /// Transfer-set sentences (`data.unlabeled`) that only the teachers label; 0 without a
    /// transfer set.
    pub unlabeled_examples: usize,
    /// The task's teacher (of an ensemble, the one whose layers are read), on the task's dev
    /// set.
    pub teacher: ModelSummary,
    /// An ensemble's teachers, that one first, with their weights; empty for one teacher.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ensemble: Vec<EnsembleMember>,
    /// The student's dev metrics on this task (its model is `tasks/NAME/`).
    pub student_dev: BTreeMap<String, f64>,
}

/// Runs a multi-task recipe into `options.out`: stage folders as for one task, the whole
/// student at the top and each task's model under `tasks/NAME/`.
pub fn run(
    recipe: &Recipe,
    options: &DistillOptions,
    stop: &AtomicBool,
) -> Result<MultiTaskSummary> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (name, weight, recipe) in recipe.task_recipes()? {
        let teachers = Teachers::load(&recipe, &options.device)?;
        let data = load_data(&recipe.data, options.shared_dir, teachers.main())?;
        tasks.push(Task {
            name,
            weight,
            recipe,
            teachers,
            data,
        });
    }
    // The encoder is built as the first task's single-task recipe would build it.
    let encoder = build_student(&tasks[0].recipe, tasks[0].teachers.main())?;
    let heads: Vec<TaskHead> = tasks
        .iter()
        .map(|task| TaskHead::of(&task.name, task.teachers.main()))
        .collect();
    let mut student = MultiTaskModel::new(&encoder, &heads, recipe.training.seed)?;
    student.set_precision(recipe.training.precision);
    drop(encoder);
    let mut examples = Vec::with_capacity(tasks.len());
    for (task, (_, model)) in tasks.iter().zip(&mut student.tasks) {
        if task.teachers.main().tokenizer.vocab() != model.tokenizer.vocab() {
            bail!(
                "task {}: its teacher's vocabulary differs from the student's (built from task {}'s)",
                task.name,
                tasks[0].name
            );
        }
        let max_len = task.recipe.data.max_seq_len;
        model.tokenizer = TextTokenizer::from_dir(
            &model.tokenizer_dir,
            max_len.min(model.config.max_sequence_length()),
        )?;
        examples.push(Examples::encode(
            &task.recipe,
            &task.data,
            task.teachers.main(),
            model,
        )?);
    }
    for (task, (_, model)) in tasks.iter().zip(&student.tasks) {
        check_stages(recipe, model, &task.teachers, |stage| task.stage(stage))
            .with_context(|| format!("task {}", task.name))?;
    }
    let out = output_dir(recipe, options)?;
    let config = &student.tasks[0].1.config;
    eprintln!(
        "{}: student {} layers x {} ({} parameters, {} heads)",
        recipe.name,
        config.num_hidden_layers,
        config.hidden_size,
        student.num_parameters(),
        tasks.len()
    );
    for (task, examples) in tasks.iter().zip(&examples) {
        eprintln!(
            "  {}: teacher {}, {}",
            task.name,
            task.teachers.describe(),
            examples.describe()
        );
    }
    let cache = TeacherCache::new(options.cache_dir, stop);
    let (stages, interrupted) =
        run_stages(recipe, &out, &student.params, |index, stage, stage_dir| {
            let mut inputs = Vec::with_capacity(tasks.len());
            for ((task, (_, model)), examples) in tasks.iter().zip(&student.tasks).zip(&examples) {
                inputs.push(StageInputs::prepare(
                    &task.recipe,
                    &task.stage(stage),
                    index,
                    model,
                    &task.teachers,
                    examples,
                    &cache,
                )?);
            }
            let trainable = MultiTask::new(
                &student,
                tasks
                    .iter()
                    .zip(&student.tasks)
                    .zip(&examples)
                    .zip(&inputs)
                    .map(|(((task, (_, model)), examples), inputs)| {
                        inputs.distillation(model, &task.teachers, &task.data.spec, examples)
                    })
                    .collect(),
                tasks.iter().map(|task| task.weight).collect(),
                recipe.training.task_temperature,
            )?;
            let state = train_stage(
                recipe,
                stage,
                stage_dir,
                &trainable,
                MEAN,
                false,
                options.resume,
                stop,
            )?;
            // One summary for the stage: each task's cache outcomes under its name.
            let (mut seconds, mut outcomes) = (0.0, Vec::new());
            for (task, inputs) in tasks.iter().zip(&inputs) {
                let (own_seconds, own_outcomes) = inputs.teacher_costs();
                seconds += own_seconds;
                outcomes.extend(own_outcomes.iter().map(|o| format!("{}: {o}", task.name)));
            }
            let summary = StageSummary::new(stage, &state, seconds, outcomes);
            Ok((state, summary))
        })?;
    if !interrupted {
        student.save(out.path())?;
        student.save_tasks(out.path())?;
    }
    let mut summaries = Vec::with_capacity(tasks.len());
    for ((task, (_, model)), examples) in tasks.iter().zip(&student.tasks).zip(&examples) {
        let spec = &task.data.spec;
        let (teacher, ensemble) = task.teachers.summaries(spec, &examples.dev)?;
        summaries.push(TaskSummary {
            name: task.name.clone(),
            task: spec.name.clone(),
            metric: spec.metrics[0].name().to_string(),
            train_examples: examples.labelled,
            unlabeled_examples: examples.unlabeled,
            teacher,
            ensemble,
            student_dev: model_summary(model, spec, &examples.dev)?.dev,
        });
    }
    let mean = |dev: &dyn Fn(&TaskSummary) -> &BTreeMap<String, f64>| {
        let total: f64 = summaries.iter().map(|t| dev(t)[&t.metric]).sum();
        total / summaries.len() as f64
    };
    let summary = MultiTaskSummary {
        recipe: recipe.name.clone(),
        student_mean: mean(&|t| &t.student_dev),
        teacher_mean: mean(&|t| &t.teacher.dev),
        student: ModelSummary {
            layers: config.num_hidden_layers,
            hidden: config.hidden_size,
            params: student.num_parameters(),
            dev: BTreeMap::new(),
        },
        tasks: summaries,
        stages,
        wall_time_s: started.elapsed().as_secs_f64(),
        interrupted,
        command: options.command.clone(),
    };
    kd_bert::write_json_atomically(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// A stage over every task: the training examples of all tasks in one index space (task by
/// task), each batch drawn from one task.
struct MultiTask<'a> {
    model: &'a MultiTaskModel,
    tasks: Vec<Distillation<'a>>,
    /// Where each task's examples start in the index space, and the end of the last.
    offsets: Vec<usize>,
    sampling: Sampling,
}

/// How an epoch's batches are drawn from the tasks.
#[derive(Debug, Clone, PartialEq)]
enum Sampling {
    /// Every task's batches once, shuffled together (MT-DNN's scheme).
    Union,
    /// As many batches, each task drawn with probability proportional to its weight times
    /// its number of batches to the power `1 / temperature`.
    Weighted { weights: Vec<f64>, temperature: f64 },
}

impl<'a> MultiTask<'a> {
    fn new(
        model: &'a MultiTaskModel,
        tasks: Vec<Distillation<'a>>,
        weights: Vec<f64>,
        temperature: Option<f64>,
    ) -> Result<Self> {
        let mut offsets = vec![0];
        for task in &tasks {
            offsets.push(offsets.last().unwrap() + task.example_lengths().len());
        }
        let sampling = match temperature.is_some() || weights.iter().any(|&w| w != 1.0) {
            true => Sampling::Weighted {
                weights,
                temperature: temperature.unwrap_or(1.0),
            },
            false => Sampling::Union,
        };
        Ok(Self {
            model,
            tasks,
            offsets,
            sampling,
        })
    }

    /// The task whose examples `index` falls among.
    fn task_of(&self, index: usize) -> usize {
        task_of(&self.offsets, index)
    }
}

impl Trainable for MultiTask<'_> {
    fn parameters(&self) -> Vec<(String, Var)> {
        let mut parameters = self.model.params.vars();
        for ((name, _), task) in self.model.tasks.iter().zip(&self.tasks) {
            let projections = task.projections().into_iter();
            parameters
                .extend(projections.map(|(p, var)| (format!("tasks.{name}.objective.{p}"), var)));
        }
        parameters
    }

    fn example_lengths(&self) -> Vec<usize> {
        self.tasks
            .iter()
            .flat_map(|task| task.example_lengths())
            .collect()
    }

    fn batch_plan(
        &self,
        lengths: &[usize],
        batch_size: usize,
        rng: &mut StdRng,
    ) -> Vec<Vec<usize>> {
        plan_batches(&self.offsets, lengths, batch_size, &self.sampling, rng)
    }

    fn loss(&self, indices: &[usize], step: usize, total_steps: usize) -> Result<StepLoss> {
        let task = self.task_of(indices[0]);
        let start = self.offsets[task];
        let local: Vec<usize> = indices.iter().map(|&i| i - start).collect();
        let mut loss = self.tasks[task].loss(&local, step, total_steps)?;
        let name = &self.model.tasks[task].0;
        loss.components = std::mem::take(&mut loss.components)
            .into_iter()
            .map(|(component, value)| (format!("{name}.{component}"), value))
            .collect();
        Ok(loss)
    }

    fn reseed_dropout(&self, seed: u64) {
        for task in &self.tasks {
            task.reseed_dropout(seed);
        }
    }

    fn evaluate(&self) -> Result<BTreeMap<String, f64>> {
        let mut metrics = BTreeMap::new();
        let mut firsts = 0.0;
        for ((name, _), task) in self.model.tasks.iter().zip(&self.tasks) {
            let first = task.metric_name();
            for (metric, value) in task.evaluate()? {
                if metric == first {
                    firsts += value;
                }
                metrics.insert(format!("{name}.{metric}"), value);
            }
        }
        metrics.insert(MEAN.to_string(), firsts / self.tasks.len() as f64);
        Ok(metrics)
    }

    fn save_model(&self, dir: &Path) -> Result<()> {
        self.model.save(dir)
    }
}

/// The task whose examples `index` falls among, the tasks' examples starting at `offsets`.
fn task_of(offsets: &[usize], index: usize) -> usize {
    offsets.partition_point(|&start| start <= index) - 1
}

/// One epoch's batches over tasks whose examples start at `offsets` (the last entry the end):
/// each task's own length-bucketed batches, then all of them once in a shuffled order, or as
/// many drawn task by task as `sampling` says.
fn plan_batches(
    offsets: &[usize],
    lengths: &[usize],
    batch_size: usize,
    sampling: &Sampling,
    rng: &mut StdRng,
) -> Vec<Vec<usize>> {
    let plan_task = |task: usize, rng: &mut StdRng| {
        let (start, end) = (offsets[task], offsets[task + 1]);
        let mut plan = kd_data::batch_plan(&lengths[start..end], batch_size, Some(rng));
        for batch in &mut plan {
            batch.iter_mut().for_each(|i| *i += start);
        }
        plan
    };
    let mut plans: Vec<Vec<Vec<usize>>> = (0..offsets.len() - 1)
        .map(|task| plan_task(task, rng))
        .collect();
    let total: usize = plans.iter().map(Vec::len).sum();
    let Sampling::Weighted {
        weights,
        temperature,
    } = sampling
    else {
        let mut all: Vec<Vec<usize>> = plans.into_iter().flatten().collect();
        all.shuffle(rng);
        return all;
    };
    let shares: Vec<f64> = plans
        .iter()
        .zip(weights)
        .map(|(plan, weight)| weight * (plan.len() as f64).powf(1.0 / temperature))
        .collect();
    let choose = WeightedIndex::new(&shares).expect("positive shares");
    let mut next = vec![0; plans.len()];
    let mut batches = Vec::with_capacity(total);
    while batches.len() < total {
        let task = choose.sample(rng);
        if next[task] == plans[task].len() {
            // A task drawn more often than it has batches starts a new pass over them.
            plans[task] = plan_task(task, rng);
            next[task] = 0;
        }
        batches.push(plans[task][next[task]].clone());
        next[task] += 1;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Three tasks of 100, 40 and 10 examples of assorted lengths.
    fn tasks() -> (Vec<usize>, Vec<usize>) {
        let offsets = vec![0, 100, 140, 150];
        let lengths = (0..150).map(|i| 5 + (i * 7) % 60).collect();
        (offsets, lengths)
    }

    #[test]
    fn the_union_takes_every_example_once_each_batch_from_one_task() {
        let (offsets, lengths) = tasks();
        let mut rng = StdRng::seed_from_u64(3);
        let plan = plan_batches(&offsets, &lengths, 8, &Sampling::Union, &mut rng);
        assert_eq!(plan.len(), 13 + 5 + 2);
        let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..150).collect::<Vec<_>>());
        for batch in &plan {
            let task = task_of(&offsets, batch[0]);
            assert!(batch.iter().all(|&i| task_of(&offsets, i) == task));
        }
        // The tasks are interleaved, not one after another.
        let first_tasks: Vec<usize> = plan[..6].iter().map(|b| task_of(&offsets, b[0])).collect();
        assert!(
            first_tasks.iter().any(|&t| t != first_tasks[0]),
            "{first_tasks:?}"
        );
    }

    #[test]
    fn sampling_follows_the_weights_and_the_temperature() {
        let (offsets, lengths) = tasks();
        let count = |sampling: &Sampling| {
            let mut counts = [0usize; 3];
            let mut rng = StdRng::seed_from_u64(5);
            for _ in 0..200 {
                let plan = plan_batches(&offsets, &lengths, 8, sampling, &mut rng);
                assert_eq!(plan.len(), 20);
                for batch in plan {
                    let task = task_of(&offsets, batch[0]);
                    assert!(batch.iter().all(|&i| task_of(&offsets, i) == task));
                    counts[task] += 1;
                }
            }
            counts.map(|c| c as f64 / 4000.0)
        };
        // Proportional to 13, 5 and 2 batches; the third task weighted 4x: 13, 5, 8.
        let shares = count(&Sampling::Weighted {
            weights: vec![1.0, 1.0, 4.0],
            temperature: 1.0,
        });
        for (share, expected) in shares.iter().zip([13.0 / 26.0, 5.0 / 26.0, 8.0 / 26.0]) {
            assert!((share - expected).abs() < 0.02, "{shares:?}");
        }
        // A high temperature flattens towards uniform.
        let flat = count(&Sampling::Weighted {
            weights: vec![1.0; 3],
            temperature: 100.0,
        });
        assert!(
            flat.iter().all(|share| (share - 1.0 / 3.0).abs() < 0.03),
            "{flat:?}"
        );
    }
}
