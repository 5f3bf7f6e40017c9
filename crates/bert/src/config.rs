//! `config.json` as Hugging Face writes it for BERT models.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What a sequence-classification head predicts, as HF's `problem_type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    SingleLabelClassification,
    Regression,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".to_string()
}
fn default_dropout() -> f32 {
    0.1
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_type_vocab_size() -> usize {
    2
}

/// A BERT configuration. Fields kd does not use are kept in `extra` so that a config read and
/// written again loses nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Label names by class index, as strings keyed by the index (HF's layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<ProblemType>,
    /// Attention heads removed from each layer (HF's `pruned_heads`): layer index to the
    /// original indices of its removed heads. Such a layer's query, key and value have fewer
    /// rows and its attention output fewer columns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pruned_heads: BTreeMap<String, Vec<usize>>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    /// Reads and validates a `config.json`; errors name the file and, for syntax or type
    /// errors, the line and column.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let config: Self = serde_json::from_str(&text)
            .with_context(|| format!("malformed model config {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("invalid model config {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            bail!("hidden_size and num_attention_heads must be positive");
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        for (layer, heads) in &self.pruned_heads {
            let index: usize = layer
                .parse()
                .map_err(|_| anyhow::anyhow!("pruned_heads has a layer named {layer:?}"))?;
            if index >= self.num_hidden_layers
                || heads.iter().any(|&h| h >= self.num_attention_heads)
            {
                bail!("pruned_heads names layer {layer} heads {heads:?}, outside the model");
            }
            if self.heads_in_layer(index) == 0 {
                bail!("pruned_heads removes every head of layer {layer}");
            }
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "relu") {
            bail!("unsupported hidden_act {:?}", self.hidden_act);
        }
        if let Some(model_type) = self.extra.get("model_type").and_then(|v| v.as_str())
            && model_type != "bert"
        {
            bail!("model_type is {model_type:?}, kd loads \"bert\" models");
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The original indices of the heads layer `layer` still has, in order.
    pub fn remaining_heads(&self, layer: usize) -> Vec<usize> {
        let removed = self.pruned_heads.get(&layer.to_string());
        (0..self.num_attention_heads)
            .filter(|head| !removed.is_some_and(|removed| removed.contains(head)))
            .collect()
    }

    /// How many attention heads layer `layer` has.
    pub fn heads_in_layer(&self, layer: usize) -> usize {
        self.remaining_heads(layer).len()
    }

    /// Label names in class-index order, when the config has a classification head.
    pub fn labels(&self) -> Option<Vec<String>> {
        let id2label = self.id2label.as_ref()?;
        let mut labels: Vec<(usize, String)> = id2label
            .iter()
            .filter_map(|(id, label)| Some((id.parse().ok()?, label.clone())))
            .collect();
        labels.sort();
        Some(labels.into_iter().map(|(_, label)| label).collect())
    }

    /// The task head's labels and problem type (regression for one output when the config
    /// names no type), when the config has a head.
    pub fn task_head(&self) -> Option<(Vec<String>, ProblemType)> {
        let labels = self.labels().filter(|labels| !labels.is_empty())?;
        let problem_type = self.problem_type.unwrap_or(if labels.len() == 1 {
            ProblemType::Regression
        } else {
            ProblemType::SingleLabelClassification
        });
        Some((labels, problem_type))
    }

    /// Records a sequence-classification head the way HF transformers expects to find it.
    pub fn set_classification_head(&mut self, labels: &[String], problem_type: ProblemType) {
        self.architectures = Some(vec!["BertForSequenceClassification".to_string()]);
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(id, label)| (id.to_string(), label.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(id, label)| (label.clone(), id))
                .collect(),
        );
        self.problem_type = Some(problem_type);
        self.extra.insert("model_type".into(), "bert".into());
    }
}
