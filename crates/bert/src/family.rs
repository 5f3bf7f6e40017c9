//! The encoder families kd reads besides BERT: RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA
//! (the discriminator) and MPNet. All are BERT-shaped post-norm encoders; what differs is
//! data, kept here, that the one encoder definition ([`crate::BertModel`]) reads:
//!
//! - parameter names: kd names every parameter as HF's BERT does (`bert.encoder.layer.N.
//!   attention.self.query.weight`, `bert.pooler.dense`, `classifier`); [`Family::checkpoint_name`]
//!   gives a family's name for it (`distilbert.transformer.layer.N.attention.q_lin.weight`),
//!   read when loading and written when saving, so that transformers loads what kd writes;
//! - config keys: DistilBERT's (`dim`, `n_layers`, ...) are renamed to BERT's on reading and
//!   back on writing ([`to_bert_keys`], [`from_bert_keys`]);
//! - position ids counted from the padding index plus one (RoBERTa, XLM-R, MPNet), token
//!   types (none for DistilBERT and MPNet, one for RoBERTa and XLM-R), ELECTRA's projection
//!   of smaller embeddings, MPNet's relative-position attention bias shared by all layers;
//! - the sequence-classification head: BERT's pooler (dense, tanh) then `classifier`; RoBERTa,
//!   XLM-R and MPNet apply dropout, dense, tanh, dropout, `out_proj` to [CLS] (`classifier.
//!   dense`, `classifier.out_proj`); ELECTRA the same with GELU; DistilBERT `pre_classifier`,
//!   ReLU, dropout, `classifier`. kd's `bert.pooler.dense` stands for the head's first dense
//!   layer in each;
//! - the masked-LM head, BERT's shape in every family but ELECTRA (whose discriminator has
//!   none): `cls.predictions.*` in BERT, `lm_head.*` in RoBERTa, XLM-R and MPNet (always
//!   GELU), `vocab_transform`, `vocab_layer_norm`, `vocab_projector` in DistilBERT.

use anyhow::{Result, bail};
use serde_json::{Map, Value};

/// An encoder family, by its `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
    XlmRoberta,
    DistilBert,
    Electra,
    MpNet,
}

/// The activation after the head's first dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadActivation {
    Tanh,
    Relu,
    Gelu,
}

/// DistilBERT's config keys and BERT's for the same thing.
const DISTILBERT_KEYS: [(&str, &str); 7] = [
    ("dim", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("hidden_dim", "intermediate_size"),
    ("activation", "hidden_act"),
    ("dropout", "hidden_dropout_prob"),
    ("attention_dropout", "attention_probs_dropout_prob"),
];

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Bert,
        Family::Roberta,
        Family::XlmRoberta,
        Family::DistilBert,
        Family::Electra,
        Family::MpNet,
    ];

    /// The family of a config's `model_type` (BERT when it names none).
    pub fn from_model_type(model_type: Option<&str>) -> Result<Self> {
        let Some(model_type) = model_type else {
            return Ok(Family::Bert);
        };
        match Self::ALL.iter().find(|f| f.model_type() == model_type) {
            Some(family) => Ok(*family),
            None => bail!(
                "model_type is {model_type:?}; kd reads {}",
                Self::ALL
                    .map(|f| format!("{:?}", f.model_type()))
                    .join(", ")
            ),
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::XlmRoberta => "xlm-roberta",
            Family::DistilBert => "distilbert",
            Family::Electra => "electra",
            Family::MpNet => "mpnet",
        }
    }

    /// HF's class for a sequence-classification model of this family.
    pub fn classification_architecture(self) -> &'static str {
        match self {
            Family::Bert => "BertForSequenceClassification",
            Family::Roberta => "RobertaForSequenceClassification",
            Family::XlmRoberta => "XLMRobertaForSequenceClassification",
            Family::DistilBert => "DistilBertForSequenceClassification",
            Family::Electra => "ElectraForSequenceClassification",
            Family::MpNet => "MPNetForSequenceClassification",
        }
    }

    /// HF's class for a bare encoder of this family.
    pub fn base_architecture(self) -> String {
        self.architecture("Model")
    }

    /// HF's class for a masked-LM model of this family; none for ELECTRA, whose
    /// discriminator has no masked-LM head.
    pub fn masked_lm_architecture(self) -> Option<String> {
        (self != Family::Electra).then(|| self.architecture("ForMaskedLM"))
    }

    /// HF's class of this family with `suffix` (`Model`, `ForMaskedLM`): the classification
    /// class's name with its suffix replaced.
    pub(crate) fn architecture(self, suffix: &str) -> String {
        let class = self.classification_architecture();
        format!(
            "{}{suffix}",
            class.trim_end_matches("ForSequenceClassification")
        )
    }

    /// The activation of the masked-LM head's transform: the encoder's `hidden_act` in BERT
    /// and DistilBERT, GELU whatever the config says in the others.
    pub fn masked_lm_activation(self, hidden_act: &str) -> &str {
        match self {
            Family::Bert | Family::DistilBert => hidden_act,
            _ => "gelu",
        }
    }

    /// The prefix of the encoder's parameters in a task model.
    fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta | Family::XlmRoberta => "roberta",
            Family::DistilBert => "distilbert",
            Family::Electra => "electra",
            Family::MpNet => "mpnet",
        }
    }

    /// The padding index position ids count from, when the family counts from one: the
    /// config's `pad_token_id`, but MPNet's is fixed at 1 in transformers.
    pub fn position_padding_index(self, pad_token_id: usize) -> Option<usize> {
        match self {
            Family::Roberta | Family::XlmRoberta => Some(pad_token_id),
            Family::MpNet => Some(1),
            _ => None,
        }
    }

    /// Whether the embeddings have a token-type table.
    pub fn has_token_types(self) -> bool {
        !matches!(self, Family::DistilBert | Family::MpNet)
    }

    /// Whether attention scores get MPNet's relative-position bias.
    pub fn relative_attention(self) -> bool {
        self == Family::MpNet
    }

    pub fn head_activation(self) -> HeadActivation {
        match self {
            Family::DistilBert => HeadActivation::Relu,
            Family::Electra => HeadActivation::Gelu,
            _ => HeadActivation::Tanh,
        }
    }

    /// Whether the classification head applies dropout to [CLS] before its first dense layer.
    pub fn dropout_before_head(self) -> bool {
        matches!(
            self,
            Family::Roberta | Family::XlmRoberta | Family::Electra | Family::MpNet
        )
    }

    /// Whether a base checkpoint's `pooler.dense` starts the task head's first dense layer: in
    /// BERT it is that layer; the other families' heads start fresh, as transformers does.
    pub fn pooler_is_head(self) -> bool {
        self == Family::Bert
    }

    /// The family's name for kd's parameter `name` in a checkpoint of a task model.
    pub fn checkpoint_name(self, name: &str) -> String {
        if self == Family::Bert {
            return name.to_string();
        }
        let prefix = self.prefix();
        if let Some(rest) = name.strip_prefix("cls.predictions.") {
            return self.masked_lm_name(rest);
        }
        if let Some(rest) = name.strip_prefix("classifier.") {
            return match self {
                Family::DistilBert => name.to_string(),
                _ => format!("classifier.out_proj.{rest}"),
            };
        }
        let Some(rest) = name.strip_prefix("bert.") else {
            return name.to_string();
        };
        if let Some(rest) = rest.strip_prefix("pooler.dense.") {
            return match self {
                Family::DistilBert => format!("pre_classifier.{rest}"),
                _ => format!("classifier.dense.{rest}"),
            };
        }
        if let Some(rest) = rest.strip_prefix("encoder.layer.")
            && let Some((layer, part)) = rest.split_once('.')
        {
            let part = self.layer_part(part);
            return match self {
                Family::DistilBert => format!("{prefix}.transformer.layer.{layer}.{part}"),
                _ => format!("{prefix}.encoder.layer.{layer}.{part}"),
            };
        }
        format!("{prefix}.{rest}")
    }

    /// The names kd's parameter `name` may have in a checkpoint of this family, preferred
    /// first: kd's own (files kd wrote before families), the family's in a task model, and
    /// the family's in a bare encoder (no prefix). A bare encoder's pooler is the head's
    /// first layer only in BERT.
    pub fn checkpoint_names(self, name: &str) -> Vec<String> {
        let mut names = vec![name.to_string()];
        let mut add = |candidate: String| {
            if !names.contains(&candidate) {
                names.push(candidate);
            }
        };
        let family_name = self.checkpoint_name(name);
        if let Some(bare) = family_name.strip_prefix(&format!("{}.", self.prefix())) {
            add(family_name.clone());
            add(bare.to_string());
        } else {
            add(family_name);
        }
        if self.pooler_is_head() {
            if let Some(bare) = name.strip_prefix("bert.") {
                add(bare.to_string());
            } else {
                add(format!("bert.{name}"));
            }
        }
        names
    }

    /// The family's name for a part of the masked-LM head, `cls.predictions.{part}` in kd.
    fn masked_lm_name(self, part: &str) -> String {
        let renames: &[(&str, &str)] = match self {
            Family::DistilBert => &[
                ("transform.dense.", "vocab_transform."),
                ("transform.LayerNorm.", "vocab_layer_norm."),
                ("decoder.", "vocab_projector."),
                ("bias", "vocab_projector.bias"),
            ],
            Family::Roberta | Family::XlmRoberta | Family::MpNet => &[
                ("transform.dense.", "lm_head.dense."),
                ("transform.LayerNorm.", "lm_head.layer_norm."),
                ("decoder.", "lm_head.decoder."),
                ("bias", "lm_head.bias"),
            ],
            Family::Bert | Family::Electra => &[],
        };
        renames
            .iter()
            .find_map(|(ours, theirs)| Some(format!("{theirs}{}", part.strip_prefix(ours)?)))
            .unwrap_or_else(|| format!("cls.predictions.{part}"))
    }

    /// A layer parameter's name within the layer (`attention.self.query.weight` in kd).
    fn layer_part(self, part: &str) -> String {
        let renames: &[(&str, &str)] = match self {
            Family::DistilBert => &[
                ("attention.self.query.", "attention.q_lin."),
                ("attention.self.key.", "attention.k_lin."),
                ("attention.self.value.", "attention.v_lin."),
                ("attention.output.dense.", "attention.out_lin."),
                ("attention.output.LayerNorm.", "sa_layer_norm."),
                ("intermediate.dense.", "ffn.lin1."),
                ("output.dense.", "ffn.lin2."),
                ("output.LayerNorm.", "output_layer_norm."),
            ],
            Family::MpNet => &[
                ("attention.self.query.", "attention.attn.q."),
                ("attention.self.key.", "attention.attn.k."),
                ("attention.self.value.", "attention.attn.v."),
                ("attention.output.dense.", "attention.attn.o."),
                ("attention.output.LayerNorm.", "attention.LayerNorm."),
            ],
            _ => &[],
        };
        for (ours, theirs) in renames {
            if let Some(rest) = part.strip_prefix(ours) {
                return format!("{theirs}{rest}");
            }
        }
        part.to_string()
    }
}

/// A family's `config.json` object with BERT's keys, as [`crate::BertConfig`] reads it.
pub fn to_bert_keys(mut json: Map<String, Value>) -> Result<Map<String, Value>> {
    let family = Family::from_model_type(json.get("model_type").and_then(Value::as_str))?;
    if family == Family::DistilBert {
        for (theirs, ours) in DISTILBERT_KEYS {
            if let Some(value) = json.remove(theirs) {
                json.insert(ours.into(), value);
            }
        }
        if json.get("sinusoidal_pos_embds") == Some(&Value::Bool(true)) {
            bail!("DistilBERT with sinusoidal position embeddings is not supported");
        }
    }
    if !family.has_token_types() {
        json.insert("type_vocab_size".into(), 0.into());
    }
    Ok(json)
}

/// A config object with BERT's keys written back in its family's keys.
pub fn from_bert_keys(mut json: Map<String, Value>) -> Map<String, Value> {
    let family = Family::from_model_type(json.get("model_type").and_then(Value::as_str))
        .unwrap_or(Family::Bert);
    if !family.has_token_types() {
        json.remove("type_vocab_size");
    }
    if family == Family::DistilBert {
        for (theirs, ours) in DISTILBERT_KEYS {
            if let Some(value) = json.remove(ours) {
                json.insert(theirs.into(), value);
            }
        }
        // DistilBERT's layer norms use 1e-12 whatever the config says.
        json.remove("layer_norm_eps");
    }
    json
}

/// The buckets and largest distance transformers' MPNet computes with, whatever its config's
/// `relative_attention_num_buckets` (the bias table's size).
const RELATIVE_BUCKETS: usize = 32;
const RELATIVE_MAX_DISTANCE: usize = 128;

/// MPNet's bucket for a key `relative` positions after the query (negative: before), as
/// transformers' `MPNetAttention` computes it, in f32 like it.
pub fn relative_position_bucket(relative: i64) -> usize {
    let (buckets, max_distance) = (RELATIVE_BUCKETS, RELATIVE_MAX_DISTANCE);
    let half = buckets / 2;
    let n = -relative;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return bucket + n;
    }
    let ratio =
        (n as f32 / max_exact as f32).ln() / (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (ratio * (half - max_exact) as f32) as usize;
    bucket += large.min(half - 1);
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_each_family() {
        let layer = |part: &str| format!("bert.encoder.layer.3.{part}");
        let cases = [
            (
                Family::Bert,
                layer("attention.self.query.weight"),
                layer("attention.self.query.weight"),
            ),
            (
                Family::DistilBert,
                layer("attention.output.LayerNorm.bias"),
                "distilbert.transformer.layer.3.sa_layer_norm.bias".into(),
            ),
            (
                Family::DistilBert,
                layer("output.dense.weight"),
                "distilbert.transformer.layer.3.ffn.lin2.weight".into(),
            ),
            (
                Family::DistilBert,
                "bert.pooler.dense.weight".into(),
                "pre_classifier.weight".into(),
            ),
            (
                Family::DistilBert,
                "classifier.bias".into(),
                "classifier.bias".into(),
            ),
            (
                Family::MpNet,
                layer("attention.output.dense.weight"),
                "mpnet.encoder.layer.3.attention.attn.o.weight".into(),
            ),
            (
                Family::MpNet,
                "bert.encoder.relative_attention_bias.weight".into(),
                "mpnet.encoder.relative_attention_bias.weight".into(),
            ),
            (
                Family::XlmRoberta,
                "classifier.weight".into(),
                "classifier.out_proj.weight".into(),
            ),
            (
                Family::Roberta,
                "bert.pooler.dense.bias".into(),
                "classifier.dense.bias".into(),
            ),
            (
                Family::Electra,
                "bert.embeddings_project.weight".into(),
                "electra.embeddings_project.weight".into(),
            ),
            (
                Family::DistilBert,
                "cls.predictions.transform.LayerNorm.weight".into(),
                "vocab_layer_norm.weight".into(),
            ),
            (
                Family::DistilBert,
                "cls.predictions.bias".into(),
                "vocab_projector.bias".into(),
            ),
            (
                Family::MpNet,
                "cls.predictions.transform.dense.weight".into(),
                "lm_head.dense.weight".into(),
            ),
            (
                Family::XlmRoberta,
                "cls.predictions.bias".into(),
                "lm_head.bias".into(),
            ),
            (
                Family::Bert,
                "cls.predictions.bias".into(),
                "cls.predictions.bias".into(),
            ),
        ];
        for (family, ours, theirs) in cases {
            assert_eq!(family.checkpoint_name(&ours), theirs, "{family:?}");
        }
        // A bare MPNet encoder (sentence-transformers) has no prefix; its pooler is not the head's.
        let names = Family::MpNet.checkpoint_names(&layer("attention.self.key.bias"));
        assert!(
            names.contains(&"encoder.layer.3.attention.attn.k.bias".to_string()),
            "{names:?}"
        );
        let pooler = Family::MpNet.checkpoint_names("bert.pooler.dense.weight");
        assert!(
            !pooler
                .iter()
                .any(|n| n.starts_with("pooler") || n.starts_with("mpnet.pooler"))
        );
        assert!(
            Family::Bert
                .checkpoint_names("bert.pooler.dense.weight")
                .contains(&"pooler.dense.weight".into())
        );
    }

    #[test]
    fn distilbert_config_keys_round_trip() {
        let json: Map<String, Value> = serde_json::from_str(
            r#"{"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37,
                "activation": "gelu", "dropout": 0.1, "attention_dropout": 0.1, "vocab_size": 99}"#,
        )
        .unwrap();
        let bert = to_bert_keys(json.clone()).unwrap();
        assert_eq!(bert["hidden_size"], 32);
        assert_eq!(bert["type_vocab_size"], 0);
        assert_eq!(from_bert_keys(bert), json);
    }

    #[test]
    fn an_unknown_model_type_lists_the_known_ones() {
        let error = Family::from_model_type(Some("gpt2"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"gpt2\"")
                && error.contains("\"mpnet\"")
                && error.contains("\"xlm-roberta\""),
            "{error}"
        );
    }

    #[test]
    fn relative_buckets_are_mpnets() {
        // transformers' MPNet (32 buckets, max distance 128): exact below 8 positions, then
        // logarithmic up to 15, keys before the query in the upper half.
        // Read off transformers 5.23's `MPNetEncoder.relative_position_bucket`, at the edges of
        // the logarithmic buckets where f32 rounding decides.
        let theirs = [
            (-300, 15),
            (-129, 15),
            (-128, 15),
            (-127, 15),
            (-64, 14),
            (-32, 12),
            (-17, 10),
            (-16, 10),
            (-15, 9),
            (-9, 8),
            (-8, 8),
            (-7, 7),
            (0, 0),
            (7, 23),
            (8, 24),
            (15, 25),
            (16, 26),
            (17, 26),
            (32, 28),
            (64, 30),
            (127, 31),
            (128, 31),
            (300, 31),
        ];
        for (relative, bucket) in theirs {
            assert_eq!(relative_position_bucket(relative), bucket, "{relative}");
        }
    }
}
