//! A composite distillation objective built from a recipe: named components with weights, a
//! temperature, and schedules for both.

use crate::gram::{fsp_loss, mmd_loss};
use crate::intermediate::{attention_kl, cosine_loss, pkd_loss};
use crate::mapping::LayerMapping;
use crate::mean::mse;
use crate::prediction::{
    check_weights, hard_cross_entropy, kl_divergence, soft_cross_entropy, soft_targets,
    weighted_average,
};
use crate::relation::relation_kl;
use crate::schedule::Schedule;
use crate::score_mse::attention_score_mse;
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use kd_bert::{AttentionMaps, AttentionProjections, BertConfig, BertOutput, Linear, Params};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An objective as a recipe describes it. DistilBERT's, in TOML:
///
/// ```toml
/// temperature = 2.0
/// components = [
///     { kind = "soft_ce", weight = 5.0 },
///     { kind = "hard", weight = 2.0 },
///     { kind = "cosine", weight = 1.0 },
/// ]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// The temperature of `soft_ce` and `kl`; 1 by default.
    #[serde(default)]
    pub temperature: Schedule,
    /// The weights of several teachers' predictions (MT-DNN's ensemble); equal by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_weights: Option<Vec<f64>>,
    pub components: Vec<ComponentConfig>,
}

impl ObjectiveConfig {
    /// The objective for a regression task, whose one output has no distribution: `soft_ce`
    /// and `kl` compare the teachers' scores by MSE instead (MT-DNN's choice for STS-B),
    /// with their weights.
    pub fn for_regression(&self) -> Self {
        let mut config = self.clone();
        for component in &mut config.components {
            if matches!(component.kind, LossKind::SoftCe | LossKind::Kl) {
                component.kind = LossKind::LogitsMse;
            }
        }
        config
    }
}

/// One weighted term of an objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    pub kind: LossKind,
    /// Its name in the breakdown and in its projection's parameter names; the kind's by
    /// default, so two components of one kind need names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// 1 by default.
    #[serde(default)]
    pub weight: Schedule,
    /// The layers a layer-comparing kind pairs, instead of its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<LayerMapping>,
    /// `attention_relations`' number of relation heads; the teacher's attention heads by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_heads: Option<usize>,
}

/// The losses an objective combines. Those on hidden states (all but `mmd`) pass the student's
/// states through a learnable projection to the teacher's width when the widths differ; those
/// on layers sum over their layer pairs, as TinyBERT and BERT-PKD do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Soft cross-entropy with the teachers' distribution at the temperature, times T².
    SoftCe,
    /// KL divergence from the teachers' distribution at the temperature, times T².
    Kl,
    /// MSE between the student's and the teachers' logits (regression tasks such as STS-B).
    LogitsMse,
    /// The loss against gold labels: cross-entropy for class ids, MSE for float targets.
    Hard,
    /// The masked-LM loss of general distillation: cross-entropy on the masked tokens, whose
    /// original ids are the labels (DistilBERT's `L_mlm`).
    Mlm,
    /// DistilBERT's cosine loss between hidden states; by default the last layers'.
    Cosine,
    /// TinyBERT's MSE between the embedding outputs (through W_e).
    EmbeddingMse,
    /// TinyBERT's MSE between hidden states (through W_h); uniform layers by default.
    HiddenMse,
    /// TinyBERT's MSE between attention scores; uniform layers by default.
    AttentionMse,
    /// MiniLM's KL between attention distributions; uniform layers by default.
    AttentionKl,
    /// MiniLM's value relation: per attention head, `KL(R_T ‖ R_S)` between the value-value
    /// distributions `R = softmax(V V^T / √head_dim)` over real keys, averaged over heads and
    /// real queries; the student needs the teacher's number of heads. The last layers by
    /// default.
    ValueRelation,
    /// MiniLMv2's attention relations: the value relation's KL for the queries, the keys and
    /// the values, summed, each split into `relation_heads` chunks of the concatenated heads
    /// (so the widths and head counts may differ). The last layers by default; MiniLMv2 also
    /// pairs the student's last with an upper-middle teacher layer (`explicit`).
    AttentionRelations,
    /// BERT-PKD's MSE between normalised `[CLS]` states; PKD-Skip's layers by default.
    Pkd,
    /// FSP (Yim et al.; TextBrewer's `fsp_loss`): the MSE between the student's and the
    /// teacher's Gram matrices `h_a^T h_b / tokens` of each two consecutive entries of its
    /// layer pairs (through W_h). By default the pairs are the embedding output followed by the
    /// uniform mapping's, so that each student layer's flow, from its input to its output,
    /// learns the teacher's across the layers it stands for.
    Fsp,
    /// NST as TextBrewer's `mmd_loss`: the MSE between the student's and the teacher's
    /// token-token similarities `h h^T / width` over real token pairs; no projection, as the
    /// widths may differ. Uniform layers by default.
    Mmd,
}

impl LossKind {
    /// The kind as a recipe names it (`soft_ce`).
    pub fn name(self) -> &'static str {
        match self {
            Self::SoftCe => "soft_ce",
            Self::Kl => "kl",
            Self::LogitsMse => "logits_mse",
            Self::Hard => "hard",
            Self::Mlm => "mlm",
            Self::Cosine => "cosine",
            Self::EmbeddingMse => "embedding_mse",
            Self::HiddenMse => "hidden_mse",
            Self::AttentionMse => "attention_mse",
            Self::AttentionKl => "attention_kl",
            Self::ValueRelation => "value_relation",
            Self::AttentionRelations => "attention_relations",
            Self::Pkd => "pkd",
            Self::Fsp => "fsp",
            Self::Mmd => "mmd",
        }
    }

    /// Whether it compares the student's predictions with the teachers'.
    pub fn compares_teacher_predictions(self) -> bool {
        matches!(self, Self::SoftCe | Self::Kl | Self::LogitsMse)
    }

    fn compares_logits(self) -> bool {
        matches!(
            self,
            Self::SoftCe | Self::Kl | Self::LogitsMse | Self::Hard | Self::Mlm
        )
    }

    /// Whether it reads the attention scores.
    fn compares_attention_maps(self) -> bool {
        matches!(self, Self::AttentionMse | Self::AttentionKl)
    }

    /// Whether it reads the query, key and value projections.
    fn compares_attention_projections(self) -> bool {
        matches!(self, Self::ValueRelation | Self::AttentionRelations)
    }

    /// Whether it reads a layer's attention, which no cache of hidden states holds.
    fn compares_attention(self) -> bool {
        self.compares_attention_maps() || self.compares_attention_projections()
    }

    /// Whether it compares attention head by head, so that both models need as many heads.
    fn compares_heads(self) -> bool {
        matches!(
            self,
            Self::AttentionMse | Self::AttentionKl | Self::ValueRelation
        )
    }

    /// Whether it compares states in the teacher's width, so that a student of another width
    /// needs a projection; `mmd` compares token-token similarities, whose shape does not
    /// depend on the width.
    fn compares_in_teacher_width(self) -> bool {
        matches!(
            self,
            Self::Cosine | Self::EmbeddingMse | Self::HiddenMse | Self::Pkd | Self::Fsp
        )
    }

    /// The layers compared unless the recipe names others; `None` for the embedding outputs,
    /// which are the only ones `embedding_mse` compares.
    fn default_layers(self) -> Option<LayerMapping> {
        match self {
            Self::Cosine => Some(LayerMapping::LastK(1)),
            Self::HiddenMse | Self::AttentionMse | Self::AttentionKl | Self::Fsp | Self::Mmd => {
                Some(LayerMapping::Uniform)
            }
            Self::Pkd => Some(LayerMapping::Skip),
            Self::ValueRelation | Self::AttentionRelations => Some(LayerMapping::LastK(1)),
            _ => None,
        }
    }
}

/// What the objective must know of a model to check layer mappings and size projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderShape {
    pub layers: usize,
    pub hidden_size: usize,
    pub heads: usize,
}

impl From<&BertConfig> for EncoderShape {
    fn from(config: &BertConfig) -> Self {
        Self {
            layers: config.num_hidden_layers,
            hidden_size: config.hidden_size,
            heads: config.num_attention_heads,
        }
    }
}

/// One model's outputs on a batch.
#[derive(Debug, Clone, Copy)]
pub struct DistillOutputs<'a> {
    /// `[batch, classes]` from a sequence classifier (`[batch, 1]` for regression),
    /// `[masked, vocab]` from a masked-LM head at the masked positions, or `[batch, seq, vocab]`
    /// from one at every position, whose losses count real tokens only. `None` for a backbone
    /// without a head, which only layer components can compare.
    pub logits: Option<&'a Tensor>,
    /// The encoder's intermediates; a teacher's may be left out (cached logits) when the
    /// objective compares predictions only (see [`Objective::needs_teacher_states`]).
    pub encoder: Option<&'a BertOutput>,
}

/// What the losses need of a batch besides the models' outputs.
#[derive(Debug, Clone, Copy)]
pub struct LossBatch<'a> {
    /// `[batch, seq]` u32, 1 for real tokens, as in `kd_bert::BertInput`.
    pub attention_mask: &'a Tensor,
    /// Gold labels for `hard`: u32 class ids or float targets, `[batch]`, or `[batch, seq]`
    /// token ids for a masked-LM head.
    pub labels: Option<&'a Tensor>,
    /// u32 in the labels' shape: which labels count (for masked-LM, the masked positions).
    /// Every label by default, or every real token for per-token logits.
    pub label_mask: Option<&'a Tensor>,
}

/// An objective's value on a batch.
#[derive(Debug)]
pub struct LossBreakdown {
    /// The weighted sum of the components, to differentiate.
    pub total: Tensor,
    /// Each component's value before weighting, by name, for logging.
    pub components: BTreeMap<String, f32>,
}

/// A weighted, scheduled sum of losses between a student and its teachers, with the
/// projections its components learn.
pub struct Objective {
    temperature: Schedule,
    teacher_weights: Vec<f64>,
    components: Vec<Component>,
    student: EncoderShape,
    teachers: Vec<EncoderShape>,
    params: Params,
}

struct Component {
    name: String,
    kind: LossKind,
    weight: Schedule,
    /// (student, teacher) layer pairs; 0 is the embedding output. `fsp` compares each two
    /// consecutive ones.
    pairs: Vec<(usize, usize)>,
    /// Maps the student's states to the teacher's width (TinyBERT's W_e or W_h).
    projection: Option<Linear>,
    /// The chunks `attention_relations` splits each projection into; unused by other kinds.
    relation_heads: usize,
}

/// BERT's initializer range, which TinyBERT's projections are drawn with.
const PROJECTION_INIT_STD: f64 = 0.02;

impl Objective {
    /// Builds the objective for a student distilled from `teachers` (several for an ensemble,
    /// whose average the prediction components learn; layer components read the first). Checks every layer mapping against
    /// the models' depths, and creates the projections in [`Objective::params`], initialised
    /// as BERT does from `seed`.
    pub fn new(
        config: &ObjectiveConfig,
        teachers: &[EncoderShape],
        student: EncoderShape,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        ensure!(
            !config.components.is_empty(),
            "an objective needs components"
        );
        ensure!(!teachers.is_empty(), "an objective needs a teacher");
        ensure!(
            config.temperature.min() > 0.0,
            "the temperature must stay positive, got {}",
            config.temperature
        );
        let teacher_weights = match &config.teacher_weights {
            Some(weights) => weights.clone(),
            None => vec![1.0; teachers.len()],
        };
        check_weights(&teacher_weights, teachers.len())?;
        let zero = |weight: &Schedule| *weight == Schedule::Constant(0.0);
        ensure!(
            !config
                .components
                .iter()
                .all(|component| zero(&component.weight)),
            "every component's weight is 0: the objective would train nothing"
        );
        let params = Params::new(device);
        let mut names = BTreeSet::new();
        let components = config
            .components
            .iter()
            .map(|component| {
                let name = component
                    .name
                    .clone()
                    .unwrap_or_else(|| component.kind.name().to_string());
                ensure!(
                    names.insert(name.clone()),
                    "two components are named {name}; give one a `name`"
                );
                ensure!(
                    component.weight.min() >= 0.0,
                    "objective component {name}: its weight must not be negative, got {}",
                    component.weight
                );
                Component::new(name.clone(), component, teachers, student, &params)
                    .with_context(|| format!("objective component {name}"))
            })
            .collect::<Result<_>>()?;
        params.init_bert(PROJECTION_INIT_STD, seed)?;
        Ok(Self {
            temperature: config.temperature,
            teacher_weights,
            components,
            student,
            teachers: teachers.to_vec(),
            params,
        })
    }

    /// Whether a component reads the teacher at all: an objective of hard labels alone (a
    /// baseline without distillation) is computed from no teacher outputs.
    pub fn needs_teacher(&self) -> bool {
        self.components
            .iter()
            .any(|component| !matches!(component.kind, LossKind::Hard | LossKind::Mlm))
    }

    /// Whether a component reads the student's predictions.
    pub fn needs_student_logits(&self) -> bool {
        self.components
            .iter()
            .any(|component| component.kind.compares_logits())
    }

    /// Whether a component compares predictions with the teachers' (soft targets or
    /// logits), so that the teachers' logits are needed.
    pub fn needs_teacher_logits(&self) -> bool {
        self.components
            .iter()
            .any(|component| component.kind.compares_teacher_predictions())
    }

    /// Whether a component compares layers, so that the teacher's intermediate states are
    /// needed and not only its logits.
    pub fn needs_teacher_states(&self) -> bool {
        self.components
            .iter()
            .any(|component| !component.kind.compares_logits())
    }

    /// What the models' passes must keep: the attention maps only when a component compares
    /// them, the query, key and value projections only when a relation component reads them.
    pub fn attention_maps(&self) -> AttentionMaps {
        let any = |reads: fn(LossKind) -> bool| {
            self.components
                .iter()
                .any(|component| reads(component.kind))
        };
        AttentionMaps::keeping(
            any(LossKind::compares_attention_maps),
            any(LossKind::compares_attention_projections),
        )
    }

    /// The first teacher's layers (0 = embedding output) that the layer components read, when
    /// they read hidden states only, so that those could come from a cache instead of a live
    /// teacher; `None` when a component reads attention.
    pub fn teacher_hidden_layers(&self) -> Option<Vec<usize>> {
        let mut layers = BTreeSet::new();
        for component in &self.components {
            if component.kind.compares_attention() {
                return None;
            }
            layers.extend(component.pairs.iter().map(|&(_, teacher)| teacher));
        }
        Some(layers.into_iter().collect())
    }

    /// The (component name, student layer, teacher layer) pairs whose attention heads are
    /// compared one to one (layer 0 is the embedding output), so that a caller can check the
    /// head counts of pruned layers, which [`EncoderShape`] does not describe.
    pub fn head_pairs(&self) -> Vec<(&str, usize, usize)> {
        self.components
            .iter()
            .filter(|component| component.kind.compares_heads())
            .flat_map(|component| {
                let name = component.name.as_str();
                component.pairs.iter().map(move |&(s, t)| (name, s, t))
            })
            .collect()
    }

    /// The projections' parameters, named `<component>.weight` and `<component>.bias`, for the
    /// optimizer and checkpoints; empty when the widths match.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The objective at update `step` (from 0) of `total_steps`, where the schedules are.
    /// `teachers` holds one output per teacher, or none when [`Objective::needs_teacher`] is
    /// false.
    pub fn compute(
        &self,
        student: &DistillOutputs,
        teachers: &[DistillOutputs],
        batch: &LossBatch,
        step: usize,
        total_steps: usize,
    ) -> Result<LossBreakdown> {
        ensure!(
            teachers.len() == self.teachers.len() || (teachers.is_empty() && !self.needs_teacher()),
            "the objective was built for {} teachers, got outputs of {}",
            self.teachers.len(),
            teachers.len()
        );
        // States may be absent where no component compares layers; those that do say so.
        if let Some(states) = student.encoder {
            check_depth(states, &self.student, "student")?;
        }
        for (outputs, shape) in teachers.iter().zip(&self.teachers) {
            if let Some(states) = outputs.encoder {
                check_depth(states, shape, "teacher")?;
            }
        }
        let temperature = self.temperature.at(step, total_steps);
        let mut weighted = Vec::with_capacity(self.components.len());
        let mut components = BTreeMap::new();
        for component in &self.components {
            let value = self
                .component_value(component, student, teachers, batch, temperature)
                .with_context(|| format!("objective component {}", component.name))?;
            components.insert(
                component.name.clone(),
                value.to_dtype(DType::F32)?.to_scalar()?,
            );
            weighted.push(value.affine(component.weight.at(step, total_steps), 0.0)?);
        }
        Ok(LossBreakdown {
            total: Tensor::stack(&weighted, 0)?.sum_all()?,
            components,
        })
    }

    fn component_value(
        &self,
        component: &Component,
        student: &DistillOutputs,
        teachers: &[DistillOutputs],
        batch: &LossBatch,
        temperature: f64,
    ) -> Result<Tensor> {
        let student_logits = || {
            student
                .logits
                .context("this component compares predictions: the student has none")
        };
        fn teacher_logits<'a>(teacher: &DistillOutputs<'a>) -> Result<&'a Tensor> {
            teacher
                .logits
                .context("this component compares predictions: the teacher has no prediction head")
        }
        let per_token = student
            .logits
            .is_some_and(|logits| logits.rank() == 3)
            .then_some(batch.attention_mask);
        let ensemble = |each: &dyn Fn(&DistillOutputs) -> Result<Tensor>| {
            let tensors = teachers.iter().map(each).collect::<Result<Vec<_>>>()?;
            weighted_average(&tensors, &self.teacher_weights)
        };
        let teacher_distribution =
            || ensemble(&|teacher| soft_targets(teacher_logits(teacher)?, temperature));
        let mask = batch.attention_mask;
        let (student_shape, teacher_shape) = (&self.student, &self.teachers[0]);
        let states = || -> Result<(&BertOutput, &BertOutput)> {
            let student = student
                .encoder
                .context("the student's states are missing")?;
            let teacher = teachers[0]
                .encoder
                .context("this component compares layers: it needs the teacher's states")?;
            Ok((student, teacher))
        };
        match component.kind {
            LossKind::SoftCe => soft_cross_entropy(
                student_logits()?,
                &teacher_distribution()?,
                temperature,
                per_token,
            ),
            LossKind::Kl => kl_divergence(
                student_logits()?,
                &teacher_distribution()?,
                temperature,
                per_token,
            ),
            LossKind::LogitsMse => {
                let teachers = ensemble(&|teacher| Ok(teacher_logits(teacher)?.clone()))?;
                mse(student_logits()?, &teachers, per_token)
            }
            LossKind::Hard | LossKind::Mlm => {
                let labels = batch.labels.context("this loss needs labels")?;
                let label_mask = batch.label_mask.or(per_token);
                let logits = student_logits()?;
                if labels.dtype().is_float() {
                    let targets = labels.to_dtype(logits.dtype())?.reshape(logits.shape())?;
                    mse(logits, &targets, label_mask)
                } else {
                    hard_cross_entropy(logits, labels, label_mask)
                }
            }
            LossKind::Cosine => {
                let (s, t) = states()?;
                component.sum_over_pairs(|i, j| {
                    cosine_loss(&component.project(s.layer(i))?, t.layer(j), mask)
                })
            }
            LossKind::EmbeddingMse | LossKind::HiddenMse => {
                let (s, t) = states()?;
                component.sum_over_pairs(|i, j| {
                    mse(&component.project(s.layer(i))?, t.layer(j), Some(mask))
                })
            }
            LossKind::Pkd => {
                let (s, t) = states()?;
                component.sum_over_pairs(|i, j| {
                    pkd_loss(&component.project(&cls(s.layer(i))?)?, &cls(t.layer(j))?)
                })
            }
            LossKind::Fsp => {
                let (s, t) = states()?;
                let project = |layer| component.project(s.layer(layer));
                component.sum_over_consecutive_pairs(|(si, ti), (sj, tj)| {
                    fsp_loss(
                        [&project(si)?, &project(sj)?],
                        [t.layer(ti), t.layer(tj)],
                        mask,
                    )
                })
            }
            LossKind::Mmd => {
                let (s, t) = states()?;
                component.sum_over_pairs(|i, j| mmd_loss(s.layer(i), t.layer(j), mask))
            }
            LossKind::AttentionMse => {
                let (s, t) = states()?;
                component.sum_over_pairs(|i, j| {
                    attention_score_mse(
                        attention_scores(s, i, "student")?,
                        attention_scores(t, j, "teacher")?,
                        mask,
                    )
                })
            }
            LossKind::AttentionKl => {
                let (s, t) = states()?;
                component.sum_over_pairs(|i, j| {
                    attention_kl(
                        attention_scores(s, i, "student")?,
                        attention_scores(t, j, "teacher")?,
                        mask,
                    )
                })
            }
            LossKind::ValueRelation => {
                let (s, t) = states()?;
                component.sum_over_pairs(|i, j| {
                    let student = attention_projections(s, i, "student")?;
                    let teacher = attention_projections(t, j, "teacher")?;
                    // Pruning may leave the paired layers different numbers of heads.
                    let heads = attention_heads(student, student_shape)?;
                    let teacher_heads = attention_heads(teacher, teacher_shape)?;
                    ensure!(
                        heads == teacher_heads,
                        "value_relation compares head by head: student layer {i} has {heads} \
                         heads, teacher layer {j} {teacher_heads}"
                    );
                    relation_kl(&student.value, &teacher.value, heads, mask)
                })
            }
            LossKind::AttentionRelations => {
                let (s, t) = states()?;
                let relation_heads = component.relation_heads;
                component.sum_over_pairs(|i, j| {
                    let student = attention_projections(s, i, "student")?;
                    let teacher = attention_projections(t, j, "teacher")?;
                    let relations = [
                        (&student.query, &teacher.query),
                        (&student.key, &teacher.key),
                        (&student.value, &teacher.value),
                    ];
                    sum((relations.into_iter()).map(|(student, teacher)| {
                        relation_kl(student, teacher, relation_heads, mask)
                    }))
                })
            }
        }
    }
}

impl Component {
    fn new(
        name: String,
        config: &ComponentConfig,
        teachers: &[EncoderShape],
        student: EncoderShape,
        params: &Params,
    ) -> Result<Self> {
        let kind = config.kind;
        let mut component = Self {
            name,
            kind,
            weight: config.weight,
            pairs: Vec::new(),
            projection: None,
            relation_heads: 0,
        };
        ensure!(
            config.relation_heads.is_none() || kind == LossKind::AttentionRelations,
            "{} takes no `relation_heads`",
            kind.name()
        );
        if kind.compares_logits() {
            ensure!(config.layers.is_none(), "{} takes no `layers`", kind.name());
            return Ok(component);
        }
        // Layers are compared with the first teacher (an ensemble's `layers_from`).
        let teacher = teachers.first().context("an objective needs a teacher")?;
        component.pairs = match (kind.default_layers(), &config.layers) {
            (Some(default), layers) => layers
                .as_ref()
                .unwrap_or(&default)
                .pairs(student.layers, teacher.layers)?,
            (None, None) => vec![(0, 0)],
            (None, Some(_)) => bail!("{} takes no `layers`", kind.name()),
        };
        if kind == LossKind::Fsp {
            if config.layers.is_none() {
                component.pairs.insert(0, (0, 0));
            }
            ensure!(
                component.pairs.len() >= 2,
                "fsp compares the flow between consecutive layer pairs: it needs two or more, \
                 got {:?}",
                component.pairs
            );
        }
        if kind == LossKind::AttentionRelations {
            component.relation_heads = config.relation_heads.unwrap_or(teacher.heads);
            check_relation_heads(component.relation_heads, student, teacher)?;
        }
        if kind.compares_heads() {
            ensure!(
                student.heads == teacher.heads,
                "{} needs as many heads in the student ({}) as in the teacher ({})",
                kind.name(),
                student.heads,
                teacher.heads
            );
        }
        if kind.compares_attention() {
            ensure!(
                component.pairs.iter().all(|&(s, _)| s > 0),
                "the embedding output (layer 0) has no attention"
            );
        } else if kind.compares_in_teacher_width() && student.hidden_size != teacher.hidden_size {
            let vb = params.var_builder().pp(&component.name);
            component.projection = Some(Linear::new(student.hidden_size, teacher.hidden_size, vb)?);
        }
        Ok(component)
    }

    fn project(&self, student_states: &Tensor) -> Result<Tensor> {
        Ok(match &self.projection {
            Some(projection) => projection.forward(student_states)?,
            None => student_states.clone(),
        })
    }

    fn sum_over_pairs(&self, loss: impl Fn(usize, usize) -> Result<Tensor>) -> Result<Tensor> {
        sum(self.pairs.iter().map(|&(s, t)| loss(s, t)))
    }

    /// The sum of `loss(earlier, later)` over each two consecutive (student, teacher) pairs.
    fn sum_over_consecutive_pairs(
        &self,
        loss: impl Fn((usize, usize), (usize, usize)) -> Result<Tensor>,
    ) -> Result<Tensor> {
        sum(self.pairs.windows(2).map(|pairs| loss(pairs[0], pairs[1])))
    }
}

/// The sum of scalar losses.
fn sum(losses: impl Iterator<Item = Result<Tensor>>) -> Result<Tensor> {
    let losses = losses.collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&losses, 0)?.sum_all()?)
}

/// The `[CLS]` (first) position's states, `[batch, hidden]`.
fn cls(states: &Tensor) -> Result<Tensor> {
    Ok(states.narrow(1, 0, 1)?.squeeze(1)?)
}

/// Layer `layer`'s attention scores (layers counted from 1), or an error saying the pass
/// skipped them.
fn attention_scores<'a>(output: &'a BertOutput, layer: usize, model: &str) -> Result<&'a Tensor> {
    output.attention_scores.get(layer - 1).with_context(|| {
        format!("the {model}'s pass kept no attention maps (run it with AttentionMaps::Keep)")
    })
}

/// Layer `layer`'s query, key and value projections (layers counted from 1), or an error saying
/// the pass skipped them.
fn attention_projections<'a>(
    output: &'a BertOutput,
    layer: usize,
    model: &str,
) -> Result<&'a AttentionProjections> {
    output
        .attention_projections
        .get(layer - 1)
        .with_context(|| {
            format!("the {model}'s pass kept no attention projections (AttentionMaps::Projections)")
        })
}

/// The attention heads a layer's projections hold: the model's, or fewer where some were
/// pruned.
fn attention_heads(projections: &AttentionProjections, shape: &EncoderShape) -> Result<usize> {
    let head_width = shape.hidden_size / shape.heads;
    Ok(projections.value.dim(candle_core::D::Minus1)? / head_width)
}

/// Checks that both models' widths split into `relation_heads` equal chunks.
fn check_relation_heads(
    relation_heads: usize,
    student: EncoderShape,
    teacher: &EncoderShape,
) -> Result<()> {
    for (model, width) in [
        ("student", student.hidden_size),
        ("teacher", teacher.hidden_size),
    ] {
        ensure!(
            relation_heads > 0 && width % relation_heads == 0,
            "attention_relations splits each model's width into `relation_heads` equal chunks: \
             the {model}'s {width} does not split into {relation_heads}"
        );
    }
    Ok(())
}

fn check_depth(output: &BertOutput, shape: &EncoderShape, model: &str) -> Result<()> {
    let layers = output.hidden_states.len();
    ensure!(
        layers == shape.layers,
        "the {model}'s outputs have {layers} layers, the objective was built for {}",
        shape.layers
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_component_names_are_the_recipe_names_of_their_kinds() {
        use LossKind::*;
        let kinds = [
            SoftCe,
            Kl,
            LogitsMse,
            Hard,
            Mlm,
            Cosine,
            EmbeddingMse,
            HiddenMse,
            AttentionMse,
            AttentionKl,
            ValueRelation,
            AttentionRelations,
            Pkd,
            Fsp,
            Mmd,
        ];
        for kind in kinds {
            assert_eq!(
                toml::Value::try_from(kind).unwrap().as_str(),
                Some(kind.name())
            );
        }
    }
}
