//! `config.json` as Hugging Face writes it for BERT models, and for the other families kd
//! reads ([`Family`]) with their keys translated to BERT's.

use crate::family::{self, Family};
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

/// The config key of kd's int8 exports: how their weights are stored.
pub const INT8_KEY: &str = "kd_quantization";

impl BertConfig {
    /// Reads and validates a `config.json`; errors name the file and, for syntax or type
    /// errors, the line and column.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let config = serde_json::from_str(&text)
            .map_err(anyhow::Error::from)
            .and_then(Self::from_json)
            .with_context(|| format!("malformed model config {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("invalid model config {}", path.display()))?;
        Ok(config)
    }

    /// A config from its JSON object in its family's keys (see [`family::to_bert_keys`]).
    pub fn from_json(json: serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        Ok(serde_json::from_value(family::to_bert_keys(json)?.into())?)
    }

    /// The config as its family writes it, for `config.json`.
    pub fn to_json(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(json)) => family::from_bert_keys(json).into(),
            _ => unreachable!("a config serialises to an object"),
        }
    }

    /// Writes `config.json` at `path` in its family's keys, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::write_json_atomically(path, &self.to_json())
    }

    /// The encoder family (`model_type`).
    pub fn family(&self) -> Family {
        let model_type = self.extra.get("model_type").and_then(|v| v.as_str());
        Family::from_model_type(model_type).unwrap_or(Family::Bert)
    }

    /// The width of the token embeddings: ELECTRA's `embedding_size` (projected to the hidden
    /// size), else the hidden size.
    pub fn embedding_size(&self) -> usize {
        match self.family() {
            Family::Electra => self.extra_usize("embedding_size"),
            _ => None,
        }
        .unwrap_or(self.hidden_size)
    }

    /// MPNet's buckets of relative positions (32 by default).
    pub fn relative_attention_buckets(&self) -> usize {
        self.extra_usize("relative_attention_num_buckets")
            .unwrap_or(32)
    }

    /// The padding index position ids count from, in the families that count so (RoBERTa,
    /// XLM-R, MPNet): real tokens from the next, padding at it.
    pub fn position_padding_index(&self) -> Option<usize> {
        self.family().position_padding_index(self.pad_token_id)
    }

    /// The first position id of a sequence: after the padding index in the families that
    /// count so, else 0.
    pub fn first_position(&self) -> usize {
        self.position_padding_index()
            .map_or(0, |padding| padding + 1)
    }

    /// The longest sequence the position table holds.
    pub fn max_sequence_length(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.first_position())
    }

    /// This config in BERT's architecture, as a TinyBERT-style student of a teacher of any
    /// family has it (the teacher's vocabulary, padding id and positions): `model_type` bert,
    /// token types (one when the family has none), no family-only keys. Its positions count
    /// from 0, so it holds at least the sequences the teacher does.
    pub fn in_bert_architecture(&self) -> BertConfig {
        let mut config = self.clone();
        // `XLMRobertaForSequenceClassification` becomes `BertForSequenceClassification`: tools
        // that build a model by its class read `architectures`, not `model_type`.
        let family = self.family().architecture("");
        config.architectures = self.architectures.as_ref().map(|classes| {
            classes
                .iter()
                .map(|class| match class.strip_prefix(&family) {
                    Some(suffix) => Family::Bert.architecture(suffix),
                    None => class.clone(),
                })
                .collect()
        });
        config
            .extra
            .insert("model_type".into(), Family::Bert.model_type().into());
        for key in ["embedding_size", "relative_attention_num_buckets"] {
            config.extra.remove(key);
        }
        config.type_vocab_size = config.type_vocab_size.max(1);
        config
    }

    /// The dropout before the task head's output layer (DistilBERT's `seq_classif_dropout`,
    /// the others' `classifier_dropout`, else the hidden dropout).
    pub fn classifier_dropout(&self) -> f32 {
        ["seq_classif_dropout", "classifier_dropout"]
            .iter()
            .find_map(|key| self.extra.get(*key).and_then(|v| v.as_f64()))
            .map_or(self.hidden_dropout_prob, |p| p as f32)
    }

    fn extra_usize(&self, key: &str) -> Option<usize> {
        self.extra
            .get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
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
        let family =
            Family::from_model_type(self.extra.get("model_type").and_then(|v| v.as_str()))?;
        if self.max_sequence_length() == 0 {
            bail!(
                "max_position_embeddings {} leaves no position for a token",
                self.max_position_embeddings
            );
        }
        if family.has_token_types() && self.type_vocab_size == 0 {
            bail!("type_vocab_size must be positive");
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

    /// Whether the weights are kd's int8 export ([`INT8_KEY`] in the config), a layout only kd
    /// reads.
    pub fn int8_weights(&self) -> bool {
        self.extra.contains_key(INT8_KEY)
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
        let family = self.family();
        self.architectures = Some(vec![family.classification_architecture().to_string()]);
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
        self.extra
            .insert("model_type".into(), family.model_type().into());
    }
}
