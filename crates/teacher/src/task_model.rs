//! BERT task models (sequence classification or regression) and plain encoders, loaded from
//! resolved model files and saved as HF-compatible directories.

use crate::resolve::{ModelFiles, tokenizer_files};
use anyhow::{Context, Result, bail};
use candle_core::{D, Device, Tensor};
use kd_bert::{
    BertConfig, BertForSequenceClassification, FrozenWeights, Mode, Params, Precision, ProblemType,
};
use kd_data::{
    EncodedExample, Example, Predictions, TaskKind, TaskSpec, TextTokenizer, batch_plan, collate,
    encode_examples, evaluate,
};
use kd_train::Progress;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The `config.json` key listing a multi-task model's heads (`MultiTaskModel`), which a
/// task model refuses to load as one.
pub(crate) const TASKS_KEY: &str = "kd_tasks";

/// A BERT model with a sequence-classification or regression head, and its tokenizer.
pub struct TaskModel {
    pub config: BertConfig,
    pub params: Params,
    pub model: BertForSequenceClassification,
    pub tokenizer: TextTokenizer,
    /// Class names by index (one placeholder name for regression).
    pub labels: Vec<String>,
    pub problem_type: ProblemType,
    /// Where the tokenizer files are, to copy them beside a saved model.
    pub tokenizer_dir: PathBuf,
}

impl TaskModel {
    /// Loads a model that has a task head (an `id2label` in its config).
    pub fn load(files: &ModelFiles, max_len: usize, device: &Device) -> Result<Self> {
        let config = BertConfig::from_file(&files.config)?;
        // Every parameter comes from the file: no initialisation to draw first.
        let model = Self::build(config, &files.dir, max_len, device)
            .with_context(|| format!("cannot build the model of {}", files.config.display()))?;
        model.params.load(&files.weights, |_| false)?;
        Ok(model)
    }

    /// Loads a task model to answer with, never to train: frozen (see
    /// [`BertForSequenceClassification::freeze`]), which speeds up small batches most. An int8
    /// export ([`kd_bert::BertConfig::int8_weights`]) computes in int8 where the CPU can.
    pub fn load_for_inference(files: &ModelFiles, max_len: usize, device: &Device) -> Result<Self> {
        let mut model = Self::load(files, max_len, device)?;
        let weights = if model.config.int8_weights() {
            FrozenWeights::Int8
        } else {
            FrozenWeights::F32
        };
        model.model.freeze(weights)?;
        Ok(model)
    }

    /// The task model `model` names (a directory or a hub id, [`ModelFiles::resolve`]),
    /// loaded to answer with ([`Self::load_for_inference`]): what every command that only reads
    /// a model starts with.
    pub fn open(model: &str, max_len: usize, device: &Device) -> Result<Self> {
        Self::load_for_inference(&ModelFiles::resolve(model)?, max_len, device)
    }

    /// Loads an encoder checkpoint and adds a new head for `labels` (or one regression
    /// output), initialised as BERT does from `seed`.
    pub fn from_backbone(
        files: &ModelFiles,
        task: TaskKind,
        labels: &[String],
        seed: u64,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut config = BertConfig::from_file(&files.config)?;
        let earlier_head = config.task_head();
        match task {
            TaskKind::Classification => {
                config.set_classification_head(labels, ProblemType::SingleLabelClassification)
            }
            TaskKind::Regression => {
                config.set_classification_head(&["LABEL_0".into()], ProblemType::Regression)
            }
        }
        // A task model's head is kept for its own task; for another set of labels (a model
        // of another task) it starts fresh, as a backbone's would.
        let other_task = earlier_head.filter(|head| config.task_head().as_ref() != Some(head));
        if let Some((earlier, _)) = &other_task {
            eprintln!(
                "{}: its task head answers {}; a fresh head is trained for {}",
                files.dir.display(),
                earlier.join(", "),
                match task {
                    TaskKind::Classification => labels.join(", "),
                    TaskKind::Regression => "a score".to_string(),
                }
            );
        }
        let model = Self::initialised(config, &files.dir, seed, max_len, device)?;
        // A backbone may lack a pooler (sentence encoders) and has no classifier.
        model.params.load_except(
            &files.weights,
            |name| name.starts_with("classifier.") || name.starts_with("bert.pooler."),
            |name| other_task.is_some() && name.starts_with("classifier."),
        )?;
        Ok(model)
    }

    /// A model for `config`, which must describe a task head, with BERT's initialisation drawn
    /// from `seed` and the tokenizer of `tokenizer_dir`.
    pub fn initialised(
        config: BertConfig,
        tokenizer_dir: &Path,
        seed: u64,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let model = Self::build(config, tokenizer_dir, max_len, device)?;
        model
            .params
            .init_bert(model.config.initializer_range, seed)?;
        Ok(model)
    }

    /// The model's structure, its parameters still unset (zero).
    fn build(
        config: BertConfig,
        tokenizer_dir: &Path,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        Self::build_on(config, Params::new(device), tokenizer_dir, max_len)
    }

    /// The model's structure on `params`: the parameters these already hold (a shared
    /// encoder's) are used as they are, the others created unset (zero).
    pub(crate) fn build_on(
        config: BertConfig,
        params: Params,
        tokenizer_dir: &Path,
        max_len: usize,
    ) -> Result<Self> {
        let params = params.in_family(config.family());
        let Some((labels, problem_type)) = config.task_head() else {
            if config.extra.contains_key(TASKS_KEY) {
                bail!("this is a multi-task model: each task's model is in its tasks/NAME folder");
            }
            bail!(
                "the model config describes no task head (no id2label): fine-tune it first with `kd finetune`"
            );
        };
        let max_len = max_len.min(config.max_sequence_length());
        let tokenizer = TextTokenizer::from_dir(tokenizer_dir, max_len)?;
        tokenizer.check_fits(config.vocab_size, tokenizer_dir)?;
        let model =
            BertForSequenceClassification::new(&config, labels.len(), params.var_builder())?;
        Ok(Self {
            config,
            params,
            model,
            tokenizer,
            labels,
            problem_type,
            tokenizer_dir: tokenizer_dir.to_path_buf(),
        })
    }

    /// Runs the encoder's products in `precision` (see [`kd_bert::Precision`]).
    pub fn set_precision(&mut self, precision: Precision) {
        self.model.bert.set_precision(precision);
    }

    pub fn precision(&self) -> Precision {
        self.model.bert.precision()
    }

    pub fn task_kind(&self) -> TaskKind {
        task_kind(self.problem_type)
    }

    /// The labels a dataset read for this model must use (none to discover for regression).
    pub fn dataset_labels(&self) -> Vec<String> {
        dataset_labels(self.problem_type, &self.labels)
    }

    /// Writes `config.json`, `model.safetensors` and the tokenizer files into `dir`, each
    /// atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_model_dir(dir, &self.config, &self.params, &self.tokenizer_dir)
    }

    /// Logits for every example, `[n, outputs]`, in example order, read back to the CPU
    /// (inference path), batched by length; `progress` advances by one a batch.
    pub fn logits(
        &self,
        examples: &[EncodedExample],
        batch_size: usize,
        progress: Option<&Progress>,
    ) -> Result<Tensor> {
        self.masked_logits(examples, batch_size, None, progress)
    }

    /// [`TaskModel::logits`] with attention heads scaled by `head_mask` (one `[heads]` tensor
    /// a layer; 0 masks a head out).
    pub fn masked_logits(
        &self,
        examples: &[EncodedExample],
        batch_size: usize,
        head_mask: Option<&[Tensor]>,
        progress: Option<&Progress>,
    ) -> Result<Tensor> {
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
        let plan = batch_plan(&lengths, batch_size, None::<&mut rand::rngs::StdRng>);
        let rows =
            self.logits_of_batches(examples, plan.into_iter().map(Ok), head_mask, progress)?;
        let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
        Ok(Tensor::stack(&rows, 0)?.to_device(&Device::Cpu)?)
    }

    /// The logits of the examples in `batches` (lists of indices into `examples`), one row
    /// each, by example index: `None` for the examples no batch holds.
    pub fn logits_of_batches(
        &self,
        examples: &[EncodedExample],
        batches: impl IntoIterator<Item = Result<Vec<usize>>> + Send,
        head_mask: Option<&[Tensor]>,
        progress: Option<&Progress>,
    ) -> Result<Vec<Option<Tensor>>> {
        let mut rows: Vec<Option<Tensor>> = vec![None; examples.len()];
        // Small batches are many short parallel sections: keep the pool's workers awake.
        kd_bert::with_busy_workers(|| -> Result<()> {
            for indices in batches {
                let indices = indices?;
                let batch = collate(examples, &indices, self.params.device())?;
                let logits = self
                    .model
                    .logits(&batch.input, head_mask, Mode::Inference)?;
                for (row, &index) in indices.iter().enumerate() {
                    rows[index] = Some(logits.get(row)?);
                }
                if let Some(progress) = progress {
                    progress.step(String::new());
                }
            }
            Ok(())
        })?;
        Ok(rows)
    }

    /// Class or score predictions from logits.
    pub fn predictions(&self, logits: &Tensor) -> Result<Predictions> {
        predictions(self.problem_type, logits)
    }

    /// The task's metrics on encoded examples.
    pub fn evaluate(
        &self,
        spec: &TaskSpec,
        examples: &[EncodedExample],
        batch_size: usize,
    ) -> Result<BTreeMap<String, f64>> {
        self.evaluate_masked(spec, examples, batch_size, None)
    }

    /// [`TaskModel::evaluate`] with attention heads scaled by `head_mask`.
    pub fn evaluate_masked(
        &self,
        spec: &TaskSpec,
        examples: &[EncodedExample],
        batch_size: usize,
        head_mask: Option<&[Tensor]>,
    ) -> Result<BTreeMap<String, f64>> {
        let logits = self.masked_logits(examples, batch_size, head_mask, None)?;
        let predictions = self.predictions(&logits)?;
        let gold: Vec<_> = examples.iter().map(|e| e.label).collect();
        evaluate(&spec.metrics, &predictions, &gold)
    }

    /// The model less the attention heads `remove` names (layer to original head indices),
    /// recorded as `pruned_heads` (see [`kd_bert::prune_heads`]).
    pub fn prune_heads(&self, remove: &BTreeMap<usize, BTreeSet<usize>>) -> Result<Self> {
        self.rebuilt(|config, parameters| kd_bert::prune_heads(config, parameters, remove))
    }

    /// The model keeping of each layer's feed-forward neurons only those `keep` lists (the
    /// same count in every layer), its `intermediate_size` that count (see
    /// [`kd_bert::prune_ffn`]).
    pub fn prune_ffn(&self, keep: &[BTreeSet<usize>]) -> Result<Self> {
        self.rebuilt(|config, parameters| kd_bert::prune_ffn(config, parameters, keep))
    }

    /// The model that `change` makes of this one's config and parameters.
    fn rebuilt(
        &self,
        change: impl FnOnce(
            &BertConfig,
            &[(String, Tensor)],
        ) -> Result<(BertConfig, Vec<(String, Tensor)>)>,
    ) -> Result<Self> {
        let parameters: Vec<(String, Tensor)> = self
            .params
            .vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect();
        let (config, parameters) = change(&self.config, &parameters)?;
        let model = Self::build(
            config,
            &self.tokenizer_dir,
            self.tokenizer.max_len(),
            self.params.device(),
        )?;
        for (name, tensor) in parameters {
            let var = model
                .params
                .get(&name)
                .context("pruning changed the parameters")?;
            var.set(&tensor)?;
        }
        Ok(model)
    }

    pub fn encode(&self, examples: &[Example]) -> Result<Vec<EncodedExample>> {
        encode_examples(&self.tokenizer, examples)
    }
}

fn task_kind(problem_type: ProblemType) -> TaskKind {
    match problem_type {
        ProblemType::Regression => TaskKind::Regression,
        ProblemType::SingleLabelClassification => TaskKind::Classification,
    }
}

/// The labels a dataset read for a head of `labels` must use (none to discover for
/// regression).
pub fn dataset_labels(problem_type: ProblemType, labels: &[String]) -> Vec<String> {
    match task_kind(problem_type) {
        TaskKind::Classification => labels.to_vec(),
        TaskKind::Regression => Vec::new(),
    }
}

/// Class or score predictions from a head's logits, `[n, outputs]`.
pub fn predictions(problem_type: ProblemType, logits: &Tensor) -> Result<Predictions> {
    Ok(match task_kind(problem_type) {
        TaskKind::Classification => Predictions::Classes(
            logits
                .argmax(D::Minus1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|c| c as usize)
                .collect(),
        ),
        TaskKind::Regression => Predictions::Scores(logits.squeeze(1)?.to_vec1::<f32>()?),
    })
}

/// Writes a model directory: `config.json`, `model.safetensors` and the tokenizer files of
/// `tokenizer_dir`, each atomically.
pub(crate) fn save_model_dir(
    dir: &Path,
    config: &BertConfig,
    params: &Params,
    tokenizer_dir: &Path,
) -> Result<()> {
    config.write(&dir.join("config.json"))?;
    params.save(&dir.join("model.safetensors"))?;
    copy_tokenizer_files(tokenizer_dir, dir)
}

/// Copies the tokenizer files of model directory `from` into `to`, each atomically.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for source in tokenizer_files(from) {
        let name = source
            .file_name()
            .context("tokenizer file without a name")?;
        let target = to.join(name);
        if source != target {
            kd_bert::write_atomically(&target, |tmp| {
                std::fs::copy(&source, tmp)?;
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// A one-layer model 8 wide over the words `good` and `bad`, with a classifier of `labels`,
/// initialised from `seed`, its tokenizer in `dir`: for tests.
#[cfg(test)]
pub(crate) fn tiny_task_model(dir: &Path, labels: &[&str], seed: u64) -> TaskModel {
    std::fs::write(
        dir.join("vocab.txt"),
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\ngood\nbad\n",
    )
    .unwrap();
    let mut config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 6, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 8,
    }))
    .unwrap();
    let labels: Vec<String> = labels.iter().map(|label| label.to_string()).collect();
    config.set_classification_head(&labels, ProblemType::SingleLabelClassification);
    TaskModel::initialised(config, dir, seed, 8, &Device::Cpu).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classifier's weights of `model`.
    fn classifier(model: &TaskModel) -> Vec<Vec<f32>> {
        let vars = model.params.vars();
        let (_, weight) = vars
            .iter()
            .find(|(name, _)| name == "classifier.weight")
            .unwrap();
        weight.as_tensor().to_vec2().unwrap()
    }

    /// Fine-tuning a task model again keeps its head for its own labels and starts a fresh
    /// one for another task's, of any size, where loading it would fail or mislead.
    #[test]
    fn a_task_head_is_kept_for_its_labels_and_fresh_for_others() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_task_model(dir.path(), &["a", "b"], 1);
        model.save(dir.path()).unwrap();
        let files = ModelFiles::from_dir(dir.path()).unwrap();
        let again = |labels: &[&str]| {
            let labels: Vec<String> = labels.iter().map(|label| label.to_string()).collect();
            let task = TaskKind::Classification;
            TaskModel::from_backbone(&files, task, &labels, 2, 8, &Device::Cpu).unwrap()
        };
        assert_eq!(classifier(&again(&["a", "b"])), classifier(&model));
        assert_ne!(classifier(&again(&["b", "a"])), classifier(&model));
        assert_eq!(classifier(&again(&["x", "y", "z"])).len(), 3);
    }
}
