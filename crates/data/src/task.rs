//! Tasks: what to read from a table file (text columns, label column), whether the label is a
//! class or a score, and which metrics to report. The five GLUE tasks kd ships with are
//! predefined; any other file is described with [`TaskSpec::custom`].

use crate::example::{Example, Label};
use crate::metrics::Metric;
use crate::table::Table;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Labels are class names, discovered from the training file.
    Classification,
    /// Labels are real-valued scores.
    Regression,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    pub text_column: String,
    pub pair_column: Option<String>,
    pub label_column: String,
    pub kind: TaskKind,
    /// Reported metrics; the first selects the best checkpoint.
    pub metrics: Vec<Metric>,
}

/// The GLUE tasks: name, folder under `glue/`, pair column, kind, metrics.
const GLUE: &[(&str, bool, TaskKind, &[Metric])] = &[
    (
        "SST-2",
        false,
        TaskKind::Classification,
        &[Metric::Accuracy],
    ),
    (
        "CoLA",
        false,
        TaskKind::Classification,
        &[Metric::Matthews, Metric::Accuracy],
    ),
    (
        "MRPC",
        true,
        TaskKind::Classification,
        &[Metric::F1, Metric::Accuracy],
    ),
    ("RTE", true, TaskKind::Classification, &[Metric::Accuracy]),
    (
        "STS-B",
        true,
        TaskKind::Regression,
        &[Metric::Pearson, Metric::Spearman],
    ),
];

/// The GLUE classification tasks' classes in their `label` column.
const GLUE_LABELS: &[(&str, &[&str])] = &[
    ("SST-2", &["0", "1"]),
    ("CoLA", &["0", "1"]),
    ("MRPC", &["0", "1"]),
    ("RTE", &["entailment", "not_entailment"]),
];

fn normalize_name(name: &str) -> String {
    name.to_ascii_lowercase().replace(['-', '_'], "")
}

impl TaskSpec {
    /// A GLUE task by name, case- and dash-insensitive (`sst2`, `SST-2`, `sts-b`).
    pub fn glue(name: &str) -> Result<Self> {
        let wanted = normalize_name(name);
        let Some(&(canonical, pair, kind, metrics)) = GLUE
            .iter()
            .find(|(task, ..)| normalize_name(task) == wanted)
        else {
            let known: Vec<&str> = GLUE.iter().map(|(task, ..)| *task).collect();
            bail!(
                "unknown task {name:?}: known tasks are {} (or describe your TSV with text_column and label_column, --text-column and --label-column on the command line)",
                known.join(", ")
            );
        };
        let (text_column, pair_column) = if pair {
            ("sentence1", Some("sentence2".to_string()))
        } else {
            ("sentence", None)
        };
        Ok(Self {
            name: canonical.to_string(),
            text_column: text_column.to_string(),
            pair_column,
            label_column: "label".to_string(),
            kind,
            metrics: metrics.to_vec(),
        })
    }

    /// A task on user TSV files: accuracy and F1 (binary) or Matthews for classification,
    /// Pearson and Spearman for regression.
    pub fn custom(
        name: &str,
        text_column: &str,
        pair_column: Option<&str>,
        label_column: &str,
        kind: TaskKind,
    ) -> Self {
        let metrics = match kind {
            TaskKind::Classification => vec![Metric::Accuracy, Metric::Matthews],
            TaskKind::Regression => vec![Metric::Pearson, Metric::Spearman],
        };
        Self {
            name: name.to_string(),
            text_column: text_column.to_string(),
            pair_column: pair_column.map(str::to_string),
            label_column: label_column.to_string(),
            kind,
            metrics,
        }
    }

    /// A GLUE classification task's classes, when its own label column is read.
    fn glue_labels(&self) -> Option<&'static [&'static str]> {
        let (_, labels) = GLUE_LABELS.iter().find(|(task, _)| *task == self.name)?;
        (self.label_column == "label").then_some(*labels)
    }

    /// Where a GLUE task's files are under a data root (`<root>/glue/<task>`).
    pub fn glue_dir(&self, data_root: &Path) -> PathBuf {
        data_root.join("glue").join(&self.name)
    }

    /// Reads examples from a table file (TSV, CSV, JSON Lines or Parquet, by extension).
    /// Classification labels must be among `labels`; with `labels` empty they are discovered
    /// (sorted, numerically when all are integers) and appended.
    pub fn read(&self, path: &Path, labels: &mut Vec<String>) -> Result<Vec<Example>> {
        let table = Table::read(path)?;
        let text = table.column(&self.text_column)?;
        let pair = self
            .pair_column
            .as_deref()
            .map(|c| table.column(c))
            .transpose()?;
        let label = table.column(&self.label_column)?;
        if table.len() == 0 {
            bail!("{} has no examples", path.display());
        }
        let raw_labels: Vec<&str> = (0..table.len())
            .map(|row| Ok(table.value(row, label)?.trim()))
            .collect::<Result<_>>()?;
        if let Some(row) = raw_labels.iter().position(|raw| raw.is_empty()) {
            bail!(
                "{}: the label (column {:?}) is empty",
                table.place(row),
                self.label_column
            );
        }
        if self.kind == TaskKind::Classification && labels.is_empty() {
            *labels = discover_labels(raw_labels.iter().copied());
            // GLUE's classes and more are GLUE's file with a mistyped label: the row check
            // below names it, where the extra would become a class of its own.
            if let Some(glue) = self.glue_labels()
                && glue.iter().all(|class| labels.contains(&class.to_string()))
            {
                *labels = glue.iter().map(|class| class.to_string()).collect();
            }
            if let [only] = labels.as_slice() {
                bail!(
                    "{}: every example has the label {only:?} (column {:?}): a classifier needs \
                     two classes or more",
                    path.display(),
                    self.label_column
                );
            }
        }
        raw_labels
            .iter()
            .enumerate()
            .map(|(row, &raw)| {
                let label = match self.kind {
                    TaskKind::Classification => {
                        Label::Class(class_of(labels, raw).with_context(|| {
                            format!(
                                "{}: unknown label {raw:?} in column {:?} (known labels: {})",
                                table.place(row),
                                self.label_column,
                                labels.join(", ")
                            )
                        })?)
                    }
                    TaskKind::Regression => Label::Score(
                        raw.parse::<f32>()
                            .ok()
                            .filter(|score| score.is_finite())
                            .with_context(|| {
                                format!(
                                    "{}: label {raw:?} in column {:?} is not a finite number",
                                    table.place(row),
                                    self.label_column
                                )
                            })?,
                    ),
                };
                Ok(Example {
                    text: table.value(row, text)?.to_string(),
                    pair: pair
                        .map(|p| table.value(row, p))
                        .transpose()?
                        .map(str::to_string),
                    label,
                })
            })
            .collect()
    }

    /// Writes examples as a TSV file in this task's columns, which [`TaskSpec::read`] reads
    /// back; `labels` names the classes. Tabs and newlines inside texts become spaces.
    pub fn write(&self, path: &Path, examples: &[Example], labels: &[String]) -> Result<()> {
        let clean = |text: &str| text.replace(['\t', '\n', '\r'], " ");
        let mut header = vec![self.text_column.as_str()];
        header.extend(self.pair_column.as_deref());
        header.push(&self.label_column);
        let mut out = header.join("\t") + "\n";
        for example in examples {
            out += &clean(&example.text);
            if let Some(pair) = &example.pair {
                out += &format!("\t{}", clean(pair));
            }
            let label = match example.label {
                Label::Class(class) => labels
                    .get(class)
                    .with_context(|| format!("class {class} has no name"))?
                    .clone(),
                Label::Score(score) => score.to_string(),
                Label::Unlabeled => bail!("an unlabeled example cannot be written as labelled"),
            };
            out += &format!("\t{label}\n");
        }
        kd_bert::write_atomically(path, |tmp| {
            std::fs::write(tmp, &out).with_context(|| format!("cannot write {}", tmp.display()))
        })
    }
}

/// The class of label `raw` among `labels`: the same text, or the same number or boolean
/// written another way, as formats write them (`1` in Parquet's integers, `1.0` in pandas'
/// CSV of floats, `True` and `true`).
fn class_of(labels: &[String], raw: &str) -> Option<usize> {
    let number = |text: &str| text.parse::<f64>().ok();
    let boolean = |text: &str| match text.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    labels.iter().position(|l| l == raw).or_else(|| {
        labels.iter().position(|l| {
            matches!((number(l), number(raw)), (Some(a), Some(b)) if a == b)
                || matches!((boolean(l), boolean(raw)), (Some(a), Some(b)) if a == b)
        })
    })
}

fn discover_labels<'a>(raw: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut labels: Vec<String> = raw.map(str::to_string).collect();
    labels.sort();
    labels.dedup();
    if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
        labels.sort_by_key(|l| l.parse::<i64>().unwrap());
    }
    labels
}

/// A task's labelled training and dev examples.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub spec: TaskSpec,
    /// Class names by index; empty for regression.
    pub labels: Vec<String>,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn written_examples_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TaskSpec::glue("RTE").unwrap();
        let labels = vec!["entailment".to_string(), "not_entailment".to_string()];
        let examples = vec![
            Example {
                text: "A man sleeps.".into(),
                pair: Some("Someone rests.".into()),
                label: Label::Class(0),
            },
            Example {
                text: "Two dogs.".into(),
                pair: Some("No dog.".into()),
                label: Label::Class(1),
            },
        ];
        let path = dir.path().join("augmented.tsv");
        spec.write(&path, &examples, &labels).unwrap();
        let mut read_labels = labels.clone();
        assert_eq!(spec.read(&path, &mut read_labels).unwrap(), examples);
    }

    /// An empty label is no class, and a mistyped one in a GLUE file is refused where it would
    /// become a class of its own; another set of classes under a GLUE task's name is the
    /// user's own.
    #[test]
    fn empty_labels_and_mistyped_glue_labels_are_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TaskSpec::glue("SST-2").unwrap();
        let read = |text: &str| {
            let path = write(dir.path(), "train.tsv", text);
            let mut labels = Vec::new();
            spec.read(&path, &mut labels).map(|_| labels)
        };
        let error = read("sentence\tlabel\ngood\t1\nbad\t\n").unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with(":3: the label (column \"label\") is empty"),
            "{error}"
        );
        let error = read("sentence\tlabel\ngood\t1\nbad\t0\nmeh\tpos\n").unwrap_err();
        assert!(
            format!("{error:#}")
                .contains(":4: unknown label \"pos\" in column \"label\" (known labels: 0, 1)"),
            "{error:#}"
        );
        let labels = read("sentence\tlabel\ngood\tpos\nbad\tneg\n").unwrap();
        assert_eq!(labels, ["neg", "pos"]);
    }

    #[test]
    fn custom_classification_discovers_sorted_labels_from_train() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "train.tsv",
            "id\tq\ta\tgold\n1\tx?\ty\tyes\n2\tz?\tw\tno\n3\tu\tv\tmaybe\n",
        );
        write(dir.path(), "dev.tsv", "id\tq\ta\tgold\n9\tp\tq\tno\n");
        let spec = TaskSpec::custom("qa", "q", Some("a"), "gold", TaskKind::Classification);
        let mut labels = Vec::new();
        let train = spec
            .read(&dir.path().join("train.tsv"), &mut labels)
            .unwrap();
        let dev = spec.read(&dir.path().join("dev.tsv"), &mut labels).unwrap();
        assert_eq!(labels, vec!["maybe", "no", "yes"]);
        assert_eq!(train[0].pair.as_deref(), Some("y"));
        assert_eq!(train[0].label, Label::Class(2));
        assert_eq!(dev[0].label, Label::Class(1));
    }

    #[test]
    fn integer_labels_sort_numerically_and_scores_parse() {
        assert_eq!(
            discover_labels(["10", "2", "1", "2"].into_iter()),
            vec!["1", "2", "10"]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "train.tsv",
            "s1\ts2\tscore\na\tb\t3.8\nc\td\t0\n",
        );
        let spec = TaskSpec::custom("sts", "s1", Some("s2"), "score", TaskKind::Regression);
        let examples = spec.read(&path, &mut Vec::new()).unwrap();
        assert_eq!(examples[0].label, Label::Score(3.8));
        let bad = write(dir.path(), "bad.tsv", "s1\ts2\tscore\na\tb\thigh\n");
        let error = spec.read(&bad, &mut Vec::new()).unwrap_err().to_string();
        assert!(
            error.contains("bad.tsv:2") && error.contains("not a finite number"),
            "{error}"
        );
    }

    /// Labels as other formats write them match the classes (`1.0` in pandas' CSV of floats,
    /// `True`); a score must be a finite number; a training file needs two classes.
    #[test]
    fn labels_match_across_formats_and_bad_labels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TaskSpec::custom("mine", "t", None, "y", TaskKind::Classification);
        let mut labels = vec!["0".to_string(), "1".to_string()];
        let path = write(dir.path(), "floats.csv", "t,y\na,1.0\nb,0.0\n");
        let read = spec.read(&path, &mut labels).unwrap();
        assert_eq!(
            (read[0].label, read[1].label),
            (Label::Class(1), Label::Class(0))
        );
        let mut booleans = vec!["false".to_string(), "true".to_string()];
        let path = write(dir.path(), "pandas.csv", "t,y\na,True\n");
        assert_eq!(
            spec.read(&path, &mut booleans).unwrap()[0].label,
            Label::Class(1)
        );
        let path = write(dir.path(), "other.csv", "t,y\na,2.0\n");
        let error = spec.read(&path, &mut labels).unwrap_err().to_string();
        assert!(
            error.contains("other.csv:2: unknown label \"2.0\""),
            "{error}"
        );

        let one = write(dir.path(), "one.csv", "t,y\na,pos\nb,pos\n");
        let error = spec.read(&one, &mut Vec::new()).unwrap_err().to_string();
        assert!(
            error.contains("every example has the label \"pos\""),
            "{error}"
        );

        let scores = TaskSpec::custom("sts", "t", None, "y", TaskKind::Regression);
        for bad in ["nan", "inf", "1e40"] {
            let path = write(dir.path(), "scores.csv", &format!("t,y\na,1\nb,{bad}\n"));
            let error = scores.read(&path, &mut Vec::new()).unwrap_err().to_string();
            assert!(
                error.contains("scores.csv:3") && error.contains("not a finite number"),
                "{error}"
            );
        }
    }

    #[test]
    fn glue_names_are_forgiving_and_glue_files_parse() {
        for name in ["sst2", "SST-2", "sst_2"] {
            assert_eq!(TaskSpec::glue(name).unwrap().name, "SST-2");
        }
        assert_eq!(TaskSpec::glue("stsb").unwrap().kind, TaskKind::Regression);
        let rte = TaskSpec::glue("rte").unwrap();
        assert_eq!(rte.pair_column.as_deref(), Some("sentence2"));
    }
}
