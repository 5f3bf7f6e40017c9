//! Distillation recipes: TOML files naming the teacher (or an ensemble of teachers), how the
//! student is built, the data (or, for a multi-task student, each task's data and teachers),
//! the training settings and the stages with their objectives. `--set key=value` overrides any
//! field before the recipe is read (`training.lr=5e-5`, `stages.0.epochs=1`).

use anyhow::{Context, Result, bail};
use kd_bert::{DeviceName, Precision};
use kd_data::DataSpec;
use kd_losses::ObjectiveConfig;
use kd_student::StudentShape;
use kd_teacher::ModelFiles;
use kd_train::{Keep, RunInputs, TrainerConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A distillation recipe as its TOML file gives it: each field a top-level key or table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The run's name: its default output folder is `runs/NAME`, and its summary records it.
    pub name: String,
    /// Free text about the recipe; not part of what `--resume` compares.
    #[serde(default)]
    pub description: String,
    /// The teacher; or, for an ensemble, `[[teachers]]` instead.
    #[serde(default)]
    pub teacher: Option<TeacherSpec>,
    /// An ensemble (MT-DNN's): prediction components learn the weighted average of the
    /// teachers' probabilities.
    #[serde(default)]
    pub teachers: Vec<TeacherSpec>,
    /// The index in `teachers` of the one whose layers layer-comparing components read (and
    /// whose layers a DistilBERT-style student copies); the first by default.
    #[serde(default)]
    pub layers_from: usize,
    /// How the student is built (`[student]`, by its `kind`).
    pub student: StudentSpec,
    /// The task's data (for general distillation, a corpus); absent in a multi-task recipe.
    #[serde(default)]
    pub data: DataSpec,
    /// A multi-task recipe (MT-DNN's): one student encoder with a head per task, each task
    /// with its own data and teachers, which then replace the top-level ones.
    #[serde(default)]
    pub tasks: Vec<TaskEntry>,
    /// The optimiser's settings, shared by every stage (`[training]`).
    pub training: TrainingSpec,
    /// The stages (`[[stages]]`, one at least), trained in order, each starting from the model
    /// the one before kept.
    pub stages: Vec<Stage>,
}

/// One task of a multi-task recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEntry {
    /// The head's name (its export folder): the data's task name by default.
    #[serde(default)]
    pub name: Option<String>,
    /// How much more often than others its batches are drawn (1 by default); with any
    /// weight or a `training.task_temperature`, batches are sampled instead of each epoch
    /// taking every task's batches once.
    #[serde(default)]
    pub weight: Option<f64>,
    /// The task's teacher; or, for an ensemble, `[[tasks.teachers]]` instead.
    #[serde(default)]
    pub teacher: Option<TeacherSpec>,
    /// The task's ensemble, as the top-level `teachers` is.
    #[serde(default)]
    pub teachers: Vec<TeacherSpec>,
    /// The index in this task's teachers of the one whose layers are read, as the top-level
    /// `layers_from` is.
    #[serde(default)]
    pub layers_from: usize,
    /// The task's data.
    pub data: DataSpec,
}

/// A teacher: the model, and its weight in an ensemble.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// A fine-tuned task model: hub id or directory.
    pub model: String,
    /// Its weight in an ensemble's average (1 by default; normalised over the ensemble).
    #[serde(default)]
    pub weight: Option<f64>,
}

/// How the student is built.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StudentSpec {
    /// A subset of the teacher's layers, copied (every other layer by default).
    Distilbert {
        /// The teacher layers (from 0) to copy, student layer `i` from `layers[i]`: every other
        /// one from the first by default.
        #[serde(default)]
        layers: Option<Vec<usize>>,
        /// Copy the teacher's task head too (true by default), else start it fresh; ignored
        /// with `from` and in general distillation.
        #[serde(default = "yes")]
        copy_head: bool,
        /// Copy the layers from this model (hub id or directory) instead, such as the
        /// teacher's pre-trained backbone; the task head then starts fresh.
        #[serde(default)]
        from: Option<String>,
    },
    /// Any shape, BERT-initialised, or from a checkpoint directory (a general-distilled
    /// student) when `init` is given.
    Tinybert {
        /// The student's layers, hidden size, attention heads and feed-forward size (an `init`
        /// checkpoint must have as many layers and the same hidden size).
        shape: StudentShape,
        /// A checkpoint to start from (hub id or directory), such as a general-distilled
        /// student of this shape; BERT's initialisation from `training.seed` when absent.
        #[serde(default)]
        init: Option<String>,
    },
    /// A task model taken as it is (hub id or directory): its config, weights, task head and
    /// tokenizer, such as one `kd prune` wrote, whose pruned heads (`pruned_heads`) and smaller
    /// feed-forward layers (`intermediate_size`) it keeps through training and export.
    Model {
        /// The task model: hub id or directory.
        model: String,
    },
}

fn yes() -> bool {
    true
}

/// How the stages train (`[training]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// The learning rate (AdamW's peak, after warmup, decaying linearly to 0), unless a stage
    /// sets its own.
    pub lr: f64,
    /// Training examples per update (32 by default).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The share of each stage's updates spent warming the learning rate up linearly (0.1 by
    /// default).
    #[serde(default = "default_warmup")]
    pub warmup: f64,
    /// AdamW's decoupled weight decay, not on biases and layer norms (0.01 by default).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Seeds the student's initialisation, the data order, dropout, masking and the objective's
    /// projections (42 by default).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Evaluate and checkpoint every N updates, besides each epoch's end.
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// Stop each stage after N updates (a quick setting).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Multi-task recipes: draw each batch's task with probability proportional to its
    /// weight times its number of batches to the power 1/T (1 is proportional, larger
    /// flattens towards uniform). Unset: each epoch takes every task's batches once, shuffled
    /// together (MT-DNN's scheme).
    #[serde(default)]
    pub task_temperature: Option<f64>,
    /// cpu, cuda or cuda:N (`--device` overrides it); unset: the first GPU when kd was built
    /// with CUDA and one is visible, else the CPU. Not part of what `--resume` compares: a
    /// run may continue on another device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceName>,
    /// f32, or bf16: the encoders' products (student's and teachers') in bf16, with f32
    /// master weights, losses and optimizer state.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

fn default_batch_size() -> usize {
    32
}
fn default_warmup() -> f64 {
    0.1
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_seed() -> u64 {
    42
}

/// One stage: an objective trained for some epochs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The stage's name, in logs and in its folder `N-name/`.
    pub name: String,
    /// Passes over the training examples (or the corpus's training sequences).
    pub epochs: usize,
    /// This stage's learning rate, when it differs from `training.lr`.
    #[serde(default)]
    pub lr: Option<f64>,
    /// The model the stage hands on: the best on dev, or the last.
    #[serde(default)]
    pub keep: Keep,
    /// The loss: its weighted components (with their layer mappings) and the temperature.
    pub objective: ObjectiveConfig,
}

impl Recipe {
    /// Reads a recipe, applying `key=value` overrides first. The paths it holds (teachers,
    /// data, the student's starting model) are taken as they are: relative ones from the
    /// current directory, not from the recipe's folder.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read recipe {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("malformed recipe {}", path.display()))?;
        Self::from_toml_value(
            toml::Value::Table(table),
            &path.display().to_string(),
            overrides,
        )
    }

    /// A recipe from its TOML structure (a recipe file's table, or one built in memory, such
    /// as a Python dict), applying `key=value` overrides first; `origin` names it in errors
    /// ("invalid recipe {origin}"). As with [`Recipe::load`], relative paths in it are taken
    /// from the current directory.
    pub fn from_toml_value(
        mut value: toml::Value,
        origin: &str,
        overrides: &[String],
    ) -> Result<Self> {
        for assignment in overrides {
            apply_override(&mut value, assignment)
                .with_context(|| format!("cannot apply --set {assignment}"))?;
        }
        // The one field a task must have, named with the task (serde names no index).
        let tasks = value.get("tasks").and_then(toml::Value::as_array);
        if let Some(index) =
            tasks.and_then(|t| t.iter().position(|task| task.get("data").is_none()))
        {
            bail!(
                "invalid recipe {origin}: task {} has no data ([tasks.data])",
                index + 1
            );
        }
        // `corpus = []` would read as no corpus, a task recipe, and fail on the teacher.
        let corpus = value.get("data").and_then(|data| data.get("corpus"));
        if corpus
            .and_then(toml::Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            bail!("invalid recipe {origin}: data.corpus lists no files");
        }
        let recipe: Self = value
            .try_into()
            .with_context(|| format!("invalid recipe {origin}"))?;
        let invalid = || format!("invalid recipe {origin}");
        if recipe.stages.is_empty() {
            bail!("recipe {origin} has no stages");
        }
        recipe.check_training().with_context(invalid)?;
        if recipe.tasks.is_empty() {
            check_teachers(&recipe.teacher, &recipe.teachers, recipe.layers_from)
                .with_context(invalid)?;
        } else {
            let top_level = recipe.teacher.is_some()
                || !recipe.teachers.is_empty()
                || recipe.layers_from != 0
                || recipe.data != DataSpec::default();
            if top_level {
                bail!(
                    "recipe {origin}: with [[tasks]], each task names its teachers and data; \
                     remove the top-level [teacher], [[teachers]], layers_from and [data]"
                );
            }
            for (index, task) in recipe.tasks.iter().enumerate() {
                check_teachers(&task.teacher, &task.teachers, task.layers_from)
                    .with_context(|| format!("task {}", index + 1))
                    .with_context(invalid)?;
                if let Some(weight) = task.weight.filter(|w| !(*w > 0.0 && w.is_finite())) {
                    bail!(
                        "{}: task {} weight {weight} must be positive",
                        invalid(),
                        index + 1
                    );
                }
            }
            let temperature = recipe.training.task_temperature;
            if let Some(t) = temperature.filter(|t| !(*t > 0.0 && t.is_finite())) {
                bail!(
                    "{}: training.task_temperature = {t} must be positive",
                    invalid()
                );
            }
        }
        Ok(recipe)
    }

    /// Refuses a stage that would train nothing or the wrong way ([`TrainerConfig::check`]),
    /// or whose name cannot name its folder `N-name/` in the run's directory.
    pub fn check_training(&self) -> Result<()> {
        for stage in &self.stages {
            let name = &stage.name;
            if name.trim().is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                bail!(
                    "stage name {name:?} names its folder: it must be non-empty, with no '/' \
                     or '\\', and not begin with '.'"
                );
            }
            self.trainer_config(stage)
                .check()
                .with_context(|| format!("stage {name}"))?;
        }
        Ok(())
    }

    /// How `stage` trains: its epochs, learning rate and model to keep, with the recipe's
    /// `training` settings.
    pub fn trainer_config(&self, stage: &Stage) -> TrainerConfig {
        let training = &self.training;
        TrainerConfig {
            epochs: stage.epochs,
            batch_size: training.batch_size,
            lr: stage.lr.unwrap_or(training.lr),
            warmup: training.warmup,
            weight_decay: training.weight_decay,
            max_steps: training.max_steps,
            seed: training.seed,
            eval_every: training.eval_every,
            keep: stage.keep,
            ..TrainerConfig::default()
        }
    }

    /// A multi-task recipe's tasks, each as a single-task recipe (its data and teachers,
    /// the shared student, training and stages), with its name and sampling weight.
    pub fn task_recipes(&self) -> Result<Vec<(String, f64, Recipe)>> {
        self.tasks
            .iter()
            .map(|task| {
                let name = match &task.name {
                    Some(name) => name.clone(),
                    None => task.data.task_spec()?.name,
                };
                let recipe = Recipe {
                    teacher: task.teacher.clone(),
                    teachers: task.teachers.clone(),
                    layers_from: task.layers_from,
                    data: task.data.clone(),
                    tasks: Vec::new(),
                    ..self.clone()
                };
                Ok((name, task.weight.unwrap_or(1.0), recipe))
            })
            .collect()
    }

    /// The teachers, the one whose layers are read (`layers_from`) first.
    pub fn teacher_specs(&self) -> Vec<&TeacherSpec> {
        let mut specs: Vec<&TeacherSpec> = self.teacher.iter().chain(&self.teachers).collect();
        if self.layers_from < specs.len() {
            specs.swap(0, self.layers_from);
        }
        specs
    }

    /// The teacher whose layers are read: the only one, or `layers_from` of an ensemble.
    pub fn main_teacher(&self) -> &TeacherSpec {
        self.teacher_specs()[0]
    }

    /// What a run of the recipe is made from (for `--resume` to check): the recipe less its
    /// description, and the files of its data, teachers and the student's starting model.
    pub fn run_inputs(&self, shared_dir: &Path) -> Result<RunInputs> {
        let mut settings = serde_json::to_value(self)?;
        if let Some(recipe) = settings.as_object_mut() {
            recipe.remove("description");
            if let Some(training) = recipe.get_mut("training").and_then(|t| t.as_object_mut()) {
                training.remove("device");
            }
        }
        let mut inputs = RunInputs::new(&settings)?;
        let mut models: Vec<&str> = self
            .teacher_specs()
            .iter()
            .map(|t| t.model.as_str())
            .collect();
        let mut data = vec![&self.data];
        if !self.tasks.is_empty() {
            data = self.tasks.iter().map(|task| &task.data).collect();
            for task in &self.tasks {
                models.extend(
                    task.teacher
                        .iter()
                        .chain(&task.teachers)
                        .map(|t| t.model.as_str()),
                );
            }
        }
        match &self.student {
            StudentSpec::Distilbert {
                from: Some(model), ..
            }
            | StudentSpec::Tinybert {
                init: Some(model), ..
            }
            | StudentSpec::Model { model } => models.push(model),
            _ => {}
        }
        for spec in data {
            for file in spec.files(shared_dir)? {
                inputs.file(&file)?;
            }
        }
        for model in models {
            let files = ModelFiles::resolve(model)?;
            inputs.file(&files.config)?;
            inputs.file(&files.weights)?;
        }
        Ok(inputs)
    }
}

/// One teacher, or an ensemble of two or more with `layers_from` among them.
fn check_teachers(
    teacher: &Option<TeacherSpec>,
    teachers: &[TeacherSpec],
    layers_from: usize,
) -> Result<()> {
    match (teacher, teachers.len()) {
        (Some(_), 0) | (None, 2..) => {}
        (None, 0) => bail!("no teacher named"),
        (None, 1) => bail!("[[teachers]] is for an ensemble of two or more; use [teacher]"),
        (Some(_), _) => bail!("both [teacher] and [[teachers]] are named: keep one"),
    }
    let count = teacher.iter().count() + teachers.len();
    if layers_from >= count {
        bail!("layers_from = {layers_from} but there are {count} teachers");
    }
    Ok(())
}

/// Applies `a.b.0.c=value`; the value is read as TOML, or else taken as a string (as it is
/// where the recipe holds a string: `name=2024` is the name "2024").
fn apply_override(recipe: &mut toml::Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').context("expected key=value")?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let path: Vec<&str> = key.trim().split('.').collect();
    set_path(recipe, &path, value, raw)
}

fn set_path(node: &mut toml::Value, path: &[&str], value: toml::Value, raw: &str) -> Result<()> {
    let Some((first, rest)) = path.split_first() else {
        *node = match (&node, value) {
            (toml::Value::String(_), value) if !value.is_str() => toml::Value::String(raw.into()),
            (_, value) => value,
        };
        return Ok(());
    };
    let child = match node {
        toml::Value::Table(table) if rest.is_empty() && !table.contains_key(*first) => {
            table.insert(first.to_string(), value);
            return Ok(());
        }
        toml::Value::Table(table) => table.get_mut(*first),
        toml::Value::Array(array) => first.parse::<usize>().ok().and_then(|i| array.get_mut(i)),
        _ => None,
    };
    set_path(
        child.with_context(|| format!("no field {first}"))?,
        rest,
        value,
        raw,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_nested_tables_and_array_elements() {
        let mut recipe: toml::Value =
            toml::from_str("[training]\nlr = 1e-4\n[[stages]]\nname = \"a\"\nepochs = 3\n")
                .unwrap();
        apply_override(&mut recipe, "training.lr=5e-5").unwrap();
        apply_override(&mut recipe, "stages.0.epochs=1").unwrap();
        apply_override(&mut recipe, "teacher.model=runs/t").unwrap_err();
        apply_override(&mut recipe, "training.eval_every=100").unwrap();
        apply_override(&mut recipe, "stages.0.name=quick run").unwrap();
        assert_eq!(recipe["training"]["lr"].as_float(), Some(5e-5));
        assert_eq!(recipe["training"]["eval_every"].as_integer(), Some(100));
        assert_eq!(recipe["stages"][0]["epochs"].as_integer(), Some(1));
        assert_eq!(recipe["stages"][0]["name"].as_str(), Some("quick run"));
        assert!(apply_override(&mut recipe, "stages.3.epochs=1").is_err());
        // Where the recipe holds a string, a value that reads as a number stays a string.
        apply_override(&mut recipe, "stages.0.name=2024").unwrap();
        assert_eq!(recipe["stages"][0]["name"].as_str(), Some("2024"));
    }

    #[test]
    fn stage_names_that_cannot_name_a_folder_zero_task_weights_and_no_corpus_are_refused() {
        let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/recipes");
        let refused = |recipe: &str, set: &str| {
            let error = Recipe::load(&recipes.join(recipe), &[set.into()]).unwrap_err();
            format!("{error:#}")
        };
        for name in ["../../escape", "a/b", "", " ", ".hidden"] {
            let error = refused(
                "sst2-tinybert-l4.toml",
                &format!("stages.0.name=\"{name}\""),
            );
            assert!(error.contains("names its folder"), "{name}: {error}");
        }
        let mtdnn = "glue-mtdnn-distilbert-l3.toml";
        let error = refused(mtdnn, "tasks.1.weight=0");
        assert!(
            error.contains("task 2 weight 0 must be positive"),
            "{error}"
        );
        let error = refused(mtdnn, "training.task_temperature=0");
        assert!(
            error.contains("task_temperature = 0 must be positive"),
            "{error}"
        );
        let error = refused(mtdnn, "tasks.1={ teacher = { model = \"t\" } }");
        assert!(
            error.ends_with("task 2 has no data ([tasks.data])"),
            "{error}"
        );
        let error = refused("general-tinybert-l4.toml", "data.corpus=[]");
        assert!(error.ends_with("data.corpus lists no files"), "{error}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2500))]

        /// A shipped recipe with bytes replaced, inserted or cut, or any text, and any
        /// override: an error or a recipe, never a panic.
        #[test]
        fn mutated_recipes_and_overrides_never_panic(
            edits in proptest::collection::vec((0..4000usize, proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>()), 0..8),
            set in "[a-z_.0-9]{0,20}=[a-z0-9.\\[\\]\"]{0,10}",
        ) {
            let shipped = include_bytes!("../../../experiments/recipes/sst2-tinybert-l4-aug.toml");
            let mut bytes = shipped.to_vec();
            for (at, byte, insert) in edits {
                let at = at % (bytes.len() + 1);
                match (insert, at < bytes.len()) {
                    (true, _) => bytes.insert(at, byte),
                    (false, true) => bytes[at] = byte,
                    (false, false) => {}
                }
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("recipe.toml");
            std::fs::write(&path, &bytes).unwrap();
            let _ = Recipe::load(&path, &[set]);
        }
    }

    #[test]
    fn a_recipe_without_stages_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../experiments/recipes/sst2-tinybert-l4.toml");
        let error = Recipe::load(&path, &["stages=[]".into()]).unwrap_err();
        assert!(error.to_string().ends_with("has no stages"), "{error:#}");
    }

    #[test]
    fn shipped_recipes_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments/recipes");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            Recipe::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            count += 1;
        }
        assert!(count >= 6, "{count} recipes");
    }
}
