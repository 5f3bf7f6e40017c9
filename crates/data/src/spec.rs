//! [`DataSpec`]: where a task's data is and how to read it, one description shared by the
//! command-line flags (`--task`, `--train`, `--text-column`, ...) and a recipe's `[data]`
//! table (`task`, `train`, `text_column`, ...), so that both mean the same thing.

use crate::example::Example;
use crate::table::TABLE_EXTENSIONS;
use crate::task::{TaskData, TaskKind, TaskSpec};
use crate::tokenizer::TextTokenizer;
use crate::unlabeled::read_unlabeled;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A task's data: a GLUE name as a shortcut for its columns, metrics and files, or any TSV
/// described by its columns; optionally augmented examples and unlabeled text (a transfer set)
/// for the teacher to label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A GLUE task (SST-2, CoLA, MRPC, RTE, STS-B: its columns, metrics and files), or a name
    /// for your own task on TSV, CSV, JSON Lines or Parquet files described by --text-column
    /// and --label-column.
    #[arg(long)]
    #[serde(default)]
    pub task: Option<String>,
    /// Directory with the train and dev files (train.tsv and dev.tsv, or .csv, .jsonl,
    /// .parquet) [default for GLUE tasks:
    /// $KD_SHARED_DIR/data/glue/TASK, KD_SHARED_DIR defaulting to ../shared].
    #[arg(long)]
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The training file (.tsv, .csv, .jsonl or .parquet), or a directory holding one named
    /// train [default: DATA_DIR/train.tsv].
    #[arg(long)]
    #[serde(default)]
    pub train: Option<PathBuf>,
    /// The dev file, or a directory holding one named dev [default: DATA_DIR/dev.tsv].
    #[arg(long, visible_alias = "data")]
    #[serde(default)]
    pub dev: Option<PathBuf>,
    /// The text column of your files (a key of JSON Lines).
    #[arg(long)]
    #[serde(default)]
    pub text_column: Option<String>,
    /// The second text column of a sentence-pair task.
    #[arg(long)]
    #[serde(default)]
    pub pair_column: Option<String>,
    /// The label column of your files.
    #[arg(long)]
    #[serde(default)]
    pub label_column: Option<String>,
    /// Labels are real-valued scores, not class names.
    #[arg(long)]
    #[serde(default)]
    pub regression: bool,
    /// Texts are truncated (or, when unlabeled, split) to this many tokens.
    #[arg(long, default_value_t = 128)]
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Quick setting: train on the first N labelled training examples only.
    #[arg(long)]
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    /// Augmented examples (`kd augment`), in the task's columns, added to the training set.
    #[arg(long)]
    #[serde(default)]
    pub augment: Option<PathBuf>,
    /// Unlabeled text for the teacher to label (a transfer set): plain text, one passage a
    /// line, or a table file (.tsv, .csv, .jsonl, .parquet) read by the text (and pair)
    /// columns. Passages are split into
    /// sentences, and sentences into chunks that fit --max-seq-len.
    #[arg(long, num_args = 1..)]
    #[serde(default)]
    pub unlabeled: Vec<PathBuf>,
    /// Keep at most this many unlabeled sentences (a seeded random choice of passages).
    #[arg(long)]
    #[serde(default)]
    pub max_unlabeled: Option<usize>,
    /// Recipes only: plain-text files (globs) for general distillation, which reads no task.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corpus: Vec<String>,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            task: None,
            data_dir: None,
            train: None,
            dev: None,
            text_column: None,
            pair_column: None,
            label_column: None,
            regression: false,
            max_seq_len: default_max_seq_len(),
            max_train_examples: None,
            augment: None,
            unlabeled: Vec::new(),
            max_unlabeled: None,
            corpus: Vec::new(),
        }
    }
}

/// The names whose flag is set.
fn names_given<const N: usize>(fields: [(&'static str, bool); N]) -> Vec<&'static str> {
    fields
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
}

fn default_max_seq_len() -> usize {
    128
}

impl DataSpec {
    /// What to read from the files: a GLUE task's columns and metrics, each column replaceable
    /// by the description's own, or a task wholly described by its columns.
    pub fn task_spec(&self) -> Result<TaskSpec> {
        let glue = self.task.as_deref().map(TaskSpec::glue);
        let mut spec = match (glue, &self.text_column, &self.label_column) {
            (Some(Ok(glue)), ..) => glue,
            (_, Some(text), Some(label)) => TaskSpec::custom(
                self.task.as_deref().unwrap_or("custom"),
                text,
                self.pair_column.as_deref(),
                label,
                if self.regression {
                    TaskKind::Regression
                } else {
                    TaskKind::Classification
                },
            ),
            (Some(Err(unknown)), None, None) => return Err(unknown),
            (None, None, None) => bail!(
                "no task: name a GLUE task (task, --task) or describe your TSV with text_column and label_column (--text-column, --label-column)"
            ),
            _ => bail!(
                "a TSV task needs both text_column and label_column (--text-column, --label-column)"
            ),
        };
        if let Some(text) = &self.text_column {
            spec.text_column = text.clone();
        }
        if let Some(pair) = &self.pair_column {
            spec.pair_column = Some(pair.clone());
        }
        if let Some(label) = &self.label_column {
            spec.label_column = label.clone();
        }
        Ok(spec)
    }

    /// The text column and the pair column of unlabeled TSV input: the description's own, or
    /// else its GLUE task's; `None` when neither names them.
    pub fn text_columns(&self) -> Result<Option<(String, Option<String>)>> {
        Ok(match (&self.text_column, &self.task) {
            (Some(text), _) => Some((text.clone(), self.pair_column.clone())),
            (None, Some(task)) => {
                let glue = TaskSpec::glue(task)?;
                Some((
                    glue.text_column,
                    self.pair_column.clone().or(glue.pair_column),
                ))
            }
            (None, None) => None,
        })
    }

    /// Refuses options that only training reads, for `command`s that read none (a flag that
    /// silently does nothing misleads).
    pub fn ensure_no_training_options(&self, command: &str) -> Result<()> {
        let given = names_given([
            ("--train", self.train.is_some()),
            ("--max-train-examples", self.max_train_examples.is_some()),
            ("--augment", self.augment.is_some()),
            ("--unlabeled", !self.unlabeled.is_empty()),
            ("--max-unlabeled", self.max_unlabeled.is_some()),
        ]);
        if !given.is_empty() {
            bail!(
                "{command} reads no training data: {} would do nothing",
                given.join(", ")
            );
        }
        Ok(())
    }

    /// Refuses task fields in the data of general distillation, which reads only `corpus`,
    /// `max_seq_len` and `max_train_examples` (a cap on the packed sequences).
    pub fn ensure_corpus_only(&self) -> Result<()> {
        if self.corpus.is_empty() {
            bail!("general distillation needs `corpus` files in [data]");
        }
        let given = names_given([
            ("task", self.task.is_some()),
            ("data_dir", self.data_dir.is_some()),
            ("train", self.train.is_some()),
            ("dev", self.dev.is_some()),
            ("text_column", self.text_column.is_some()),
            ("pair_column", self.pair_column.is_some()),
            ("label_column", self.label_column.is_some()),
            ("regression", self.regression),
            ("augment", self.augment.is_some()),
            ("unlabeled", !self.unlabeled.is_empty()),
            ("max_unlabeled", self.max_unlabeled.is_some()),
        ]);
        if !given.is_empty() {
            bail!(
                "general distillation reads a corpus, not a task: remove {} from [data]",
                given.join(", ")
            );
        }
        Ok(())
    }

    /// The training file: `train` (a file, or a directory holding one named train), else
    /// the one in the data directory: `train.tsv`, or `.csv`, `.jsonl` or `.parquet`.
    pub fn train_path(&self, shared_dir: &Path) -> Result<PathBuf> {
        self.split_path(self.train.as_deref(), "train", shared_dir)
    }

    /// The dev file, as [`DataSpec::train_path`] finds the training file.
    pub fn dev_path(&self, shared_dir: &Path) -> Result<PathBuf> {
        self.split_path(self.dev.as_deref(), "dev", shared_dir)
    }

    fn split_path(&self, given: Option<&Path>, name: &str, shared_dir: &Path) -> Result<PathBuf> {
        let dir = match (given, self.data_dir.as_deref()) {
            (Some(path), _) if !path.is_dir() => return Ok(path.to_path_buf()),
            (Some(dir), _) | (None, Some(dir)) => dir.to_path_buf(),
            (None, None) => match self.task.as_deref().map(TaskSpec::glue) {
                Some(Ok(glue)) => glue.glue_dir(&shared_dir.join("data")),
                _ => bail!(
                    "where is the {name} file? give data_dir (--data-dir) or the file itself \
                     (--{name})"
                ),
            },
        };
        let present: Vec<PathBuf> = TABLE_EXTENSIONS
            .iter()
            .map(|extension| dir.join(format!("{name}.{extension}")))
            .filter(|path| path.is_file())
            .collect();
        match &present[..] {
            [] => Ok(dir.join(format!("{name}.tsv"))),
            [path] => Ok(path.clone()),
            [first, second, ..] => bail!(
                "{} and {} are both in {}: name the one to read with --{name}",
                first.display(),
                second.display(),
                dir.display()
            ),
        }
    }

    /// Every file the data is read from: a corpus's files, or the training and dev files with
    /// any augmented and unlabeled ones.
    pub fn files(&self, shared_dir: &Path) -> Result<Vec<PathBuf>> {
        if !self.corpus.is_empty() {
            return crate::expand_globs(&self.corpus);
        }
        let mut files = vec![self.train_path(shared_dir)?, self.dev_path(shared_dir)?];
        files.extend(self.augment.iter().cloned());
        files.extend(self.unlabeled_files()?);
        Ok(files)
    }

    /// The unlabeled files, each entry a path or a glob (`corpus/*.txt`) as a corpus's are.
    fn unlabeled_files(&self) -> Result<Vec<PathBuf>> {
        let patterns: Vec<String> = self
            .unlabeled
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        crate::expand_globs(&patterns).context("unlabeled")
    }

    /// Reads the training and dev examples with the class names `labels` (a teacher's, in its
    /// order; an empty list discovers them from the training file, sorted); a label outside
    /// the list is an error naming the file and line.
    pub fn load(&self, shared_dir: &Path, mut labels: Vec<String>) -> Result<TaskData> {
        let spec = self.task_spec()?;
        let train = self.read_train(&spec, shared_dir, &mut labels)?;
        let dev = spec.read(&self.dev_path(shared_dir)?, &mut labels)?;
        Ok(TaskData {
            spec,
            labels,
            train,
            dev,
        })
    }

    /// The labelled training examples: the first `max_train_examples` of the training file,
    /// then the augmented ones.
    pub fn read_train(
        &self,
        spec: &TaskSpec,
        shared_dir: &Path,
        labels: &mut Vec<String>,
    ) -> Result<Vec<Example>> {
        let mut train = spec.read(&self.train_path(shared_dir)?, labels)?;
        if let Some(limit) = self.max_train_examples {
            if limit == 0 {
                bail!("max_train_examples (--max-train-examples) is 0: nothing to train on");
            }
            train.truncate(limit);
        }
        if let Some(path) = &self.augment {
            train.extend(spec.read(path, labels)?);
        }
        Ok(train)
    }

    /// The transfer set: sentences of the unlabeled files, split to fit the tokenizer's
    /// maximum length, at most `max_unlabeled` of them, chosen and shuffled by `seed`.
    pub fn load_unlabeled(&self, tokenizer: &TextTokenizer, seed: u64) -> Result<Vec<Example>> {
        if self.unlabeled.is_empty() {
            return Ok(Vec::new());
        }
        read_unlabeled(
            &self.unlabeled_files()?,
            self.text_columns()?,
            tokenizer,
            self.max_unlabeled,
            seed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::Label;

    /// A GLUE task by name, its files in the shared folder.
    fn glue(task: &str) -> DataSpec {
        DataSpec {
            task: Some(task.to_string()),
            ..DataSpec::default()
        }
    }

    #[test]
    fn general_distillation_data_is_a_corpus_without_task_fields() {
        let mut spec = glue("SST-2");
        spec.task = None;
        assert!(
            spec.ensure_corpus_only()
                .unwrap_err()
                .to_string()
                .contains("corpus")
        );
        spec.corpus = vec!["text/*.txt".into()];
        spec.ensure_corpus_only().unwrap();
        spec.task = Some("SST-2".into());
        spec.regression = true;
        assert_eq!(
            spec.ensure_corpus_only().unwrap_err().to_string(),
            "general distillation reads a corpus, not a task: remove task, regression from [data]"
        );
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn recipe_table_and_flags_describe_the_same_task() {
        let toml_spec: DataSpec = toml::from_str(
            "task = \"intent\"\ntrain = \"t.tsv\"\ndev = \"d.tsv\"\ntext_column = \"q\"\nlabel_column = \"y\"\nmax_seq_len = 64\n",
        )
        .unwrap();
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            data: DataSpec,
        }
        let flags = <Flags as clap::Parser>::try_parse_from([
            "kd",
            "--task",
            "intent",
            "--train",
            "t.tsv",
            "--dev",
            "d.tsv",
            "--text-column",
            "q",
            "--label-column",
            "y",
            "--max-seq-len",
            "64",
        ])
        .unwrap();
        assert_eq!(toml_spec, flags.data);
        let spec = toml_spec.task_spec().unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.kind),
            ("intent", TaskKind::Classification)
        );
        assert!(toml::from_str::<DataSpec>("task = \"SST-2\"\ntext_col = \"x\"\n").is_err());
    }

    #[test]
    fn glue_names_are_shortcuts_whose_columns_and_files_can_be_replaced() {
        let shared = Path::new("/shared");
        let sst2 = glue("sst2");
        assert_eq!(
            sst2.train_path(shared).unwrap(),
            Path::new("/shared/data/glue/SST-2/train.tsv")
        );
        let mut mine = glue("SST-2");
        mine.train = Some("mine.tsv".into());
        mine.text_column = Some("review".into());
        let spec = mine.task_spec().unwrap();
        assert_eq!(spec.text_column, "review");
        assert_eq!(spec.label_column, "label");
        assert_eq!(spec.metrics, TaskSpec::glue("SST-2").unwrap().metrics);
        assert_eq!(mine.train_path(shared).unwrap(), Path::new("mine.tsv"));
        assert_eq!(
            glue("RTE").text_columns().unwrap(),
            Some(("sentence1".into(), Some("sentence2".into())))
        );
        assert_eq!(mine.text_columns().unwrap(), Some(("review".into(), None)));
        let error = mine.ensure_no_training_options("kd eval").unwrap_err();
        assert_eq!(
            error.to_string(),
            "kd eval reads no training data: --train would do nothing"
        );
        glue("SST-2").ensure_no_training_options("kd eval").unwrap();
        assert_eq!(
            mine.dev_path(shared).unwrap(),
            Path::new("/shared/data/glue/SST-2/dev.tsv")
        );

        let unknown = glue("intent").task_spec().unwrap_err().to_string();
        assert!(unknown.contains("known tasks are SST-2"), "{unknown}");
        let mut half = glue("intent");
        half.text_column = Some("q".into());
        let error = half.task_spec().unwrap_err().to_string();
        assert!(error.contains("label_column"), "{error}");
        let mut no_files = glue("intent");
        no_files.text_column = Some("q".into());
        no_files.label_column = Some("y".into());
        let error = no_files.train_path(shared).unwrap_err().to_string();
        assert!(error.contains("--data-dir"), "{error}");
    }

    #[test]
    fn teacher_labels_fix_the_order_and_unknown_labels_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("train.tsv"),
            "q\ty\nhi\tgreet\nbye\tleave\n",
        );
        write(&dir.path().join("dev.tsv"), "q\ty\nhello\tgreet\n");
        let mut spec = glue("intent");
        spec.data_dir = Some(dir.path().to_path_buf());
        spec.text_column = Some("q".into());
        spec.label_column = Some("y".into());
        let teacher_labels = vec!["leave".to_string(), "greet".to_string()];
        let data = spec
            .load(Path::new("/none"), teacher_labels.clone())
            .unwrap();
        assert_eq!(data.labels, teacher_labels);
        assert_eq!(data.train[0].label, Label::Class(1));

        write(
            &dir.path().join("dev.tsv"),
            "q\ty\nhello\tgreet\nhm\tthink\n",
        );
        let error = format!(
            "{:#}",
            spec.load(Path::new("/none"), teacher_labels).unwrap_err()
        );
        assert!(
            error.contains("dev.tsv:3") && error.contains("\"think\""),
            "{error}"
        );
    }
}
