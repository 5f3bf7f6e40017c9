//! The BERT encoder, laid out like HF's `BertModel` so that parameter names match its
//! checkpoints (`embeddings.*`, `encoder.layer.N.*`, `pooler.*`), and the other families'
//! encoders with their differences as data ([`crate::family`]).

use crate::config::BertConfig;
use crate::family::{HeadActivation, relative_position_bucket};
use crate::kernels;
use crate::layers::{Dropout, DropoutRng, FrozenWeights, LayerNorm, Linear, Mode};
use crate::precision::{Precision, most_negative};
use anyhow::{Result, bail};
use candle_core::{DType, Module, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};

/// One batch of token ids, as `[batch, seq]` u32 tensors.
#[derive(Debug, Clone)]
pub struct BertInput {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
}

/// Where the last layer computes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastLayer {
    /// At every position: every hidden state and attention map whole.
    AllPositions,
    /// At [CLS] alone, all that a sequence-level head reads: the last layer's keys and values
    /// still cover every position, but its queries, attention output and feed-forward shrink
    /// to one row (about five sixths of the layer's work on 25 tokens). Its hidden state is
    /// then `[batch, 1, hidden]` and its attention maps `[batch, heads, 1, seq]`.
    ClsOnly,
}

/// Whether a forward pass keeps each layer's attention scores and probabilities, and its
/// query, key and value projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMaps {
    /// Kept in [`BertOutput`], for the losses and views that read them.
    Keep,
    /// Never written out: each head's attention runs in one fused pass that keeps its block
    /// in cache (less memory and memory traffic; `experiments/results/bench.md`, session 21),
    /// and [`BertOutput`]'s `attention_scores` and `attention_probs` are empty.
    Skip,
    /// The maps skipped as with [`AttentionMaps::Skip`], each layer's projections kept in
    /// [`BertOutput::attention_projections`] (MiniLM's relation losses read only those).
    Projections,
    /// The maps and the projections kept.
    KeepWithProjections,
}

impl AttentionMaps {
    /// What a pass keeps when its readers need the maps (`scores`) and the projections.
    pub fn keeping(scores: bool, projections: bool) -> Self {
        match (scores, projections) {
            (true, true) => Self::KeepWithProjections,
            (true, false) => Self::Keep,
            (false, true) => Self::Projections,
            (false, false) => Self::Skip,
        }
    }

    /// Whether the attention scores and probabilities are kept.
    pub fn keeps_scores(self) -> bool {
        matches!(self, Self::Keep | Self::KeepWithProjections)
    }

    /// Whether the query, key and value projections are kept.
    pub fn keeps_projections(self) -> bool {
        matches!(self, Self::Projections | Self::KeepWithProjections)
    }
}

/// One layer's query, key and value projections, after their biases and before the score
/// product: `[batch, seq, heads * head_dim]`, the heads side by side in the layer's own order
/// (only the heads left after pruning). The queries cover the positions the layer computes
/// ([CLS] alone in a last layer run with [`LastLayer::ClsOnly`]).
#[derive(Debug, Clone)]
pub struct AttentionProjections {
    pub query: Tensor,
    pub key: Tensor,
    pub value: Tensor,
}

impl AttentionProjections {
    /// The three projections, each passed through `f`.
    fn map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        Ok(Self {
            query: f(&self.query)?,
            key: f(&self.key)?,
            value: f(&self.value)?,
        })
    }
}

/// What a forward pass scales parts of the model by: 0 removes a part, 1 keeps it, and a
/// variable gives each part's gradient (Michel et al.'s importance, 2019).
#[derive(Debug, Clone, Copy, Default)]
pub struct Masks<'a> {
    /// One `[heads]` tensor a layer scaling each attention head's output (HF's `head_mask`).
    pub heads: Option<&'a [Tensor]>,
    /// One `[intermediate_size]` tensor a layer scaling each feed-forward neuron's activation
    /// (the input of `output.dense`), as TextPruner's FFN mask does.
    pub neurons: Option<&'a [Tensor]>,
}

impl<'a> Masks<'a> {
    /// Attention heads scaled by `heads`, every neuron kept.
    pub fn heads(heads: Option<&'a [Tensor]>) -> Self {
        Self {
            heads,
            neurons: None,
        }
    }
}

/// Every intermediate of a forward pass.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// Embedding output (after layer norm), `[batch, seq, hidden]`.
    pub embeddings: Tensor,
    /// Each layer's output, `[batch, seq, hidden]`; the last is the final hidden state.
    pub hidden_states: Vec<Tensor>,
    /// Each layer's attention scores before the softmax, after the mask is added (masked keys
    /// hold a very negative value), `[batch, heads, seq, seq]`; empty when the pass skipped
    /// them ([`AttentionMaps::Skip`]).
    pub attention_scores: Vec<Tensor>,
    /// Each layer's attention probabilities, `[batch, heads, seq, seq]`; empty when skipped.
    pub attention_probs: Vec<Tensor>,
    /// Each layer's query, key and value projections; empty unless the pass kept them
    /// ([`AttentionMaps::keeps_projections`]).
    pub attention_projections: Vec<AttentionProjections>,
    /// `tanh(W h_[CLS] + b)`, when the model has a pooler.
    pub pooled: Option<Tensor>,
}

impl BertOutput {
    /// Layer `layer`'s output, counting the embedding output as layer 0 (as layer mappings
    /// do).
    pub fn layer(&self, layer: usize) -> &Tensor {
        match layer {
            0 => &self.embeddings,
            _ => &self.hidden_states[layer - 1],
        }
    }

    pub fn last_hidden_state(&self) -> &Tensor {
        self.hidden_states.last().unwrap_or(&self.embeddings)
    }

    /// Mean of the last hidden state over real tokens, as sentence-transformers pools.
    pub fn mean_pooled(&self, attention_mask: &Tensor) -> Result<Tensor> {
        let mask = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = self.last_hidden_state().broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        Ok(summed.broadcast_div(&counts)?)
    }
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    /// None in the families without token types; a table of one row ignores the ids.
    token_type: Option<Embedding>,
    layer_norm: LayerNorm,
    dropout: Dropout,
    /// ELECTRA's projection of smaller embeddings to the hidden size.
    projection: Option<Linear>,
    /// The padding index that position ids count from (RoBERTa, XLM-R, MPNet): real tokens
    /// from the next, padding at it.
    padding_position: Option<usize>,
}

fn embedding(count: usize, dim: usize, vb: VarBuilder) -> Result<Embedding> {
    let weight = vb.get_with_hints((count, dim), "weight", Init::Const(0.0))?;
    Ok(Embedding::new(weight, dim))
}

impl Embeddings {
    /// The embeddings under `vb` (`bert.embeddings`); ELECTRA's projection is its sibling
    /// `embeddings_project`, under `encoder`.
    fn new(
        cfg: &BertConfig,
        vb: VarBuilder,
        encoder: &VarBuilder,
        rng: &DropoutRng,
    ) -> Result<Self> {
        let width = cfg.embedding_size();
        let family = cfg.family();
        let token_type = match family.has_token_types() {
            true => Some(embedding(
                cfg.type_vocab_size,
                width,
                vb.pp("token_type_embeddings"),
            )?),
            false => None,
        };
        let projection = match width != cfg.hidden_size {
            true => Some(Linear::new(
                width,
                cfg.hidden_size,
                encoder.pp("embeddings_project"),
            )?),
            false => None,
        };
        Ok(Self {
            word: embedding(cfg.vocab_size, width, vb.pp("word_embeddings"))?,
            position: embedding(
                cfg.max_position_embeddings,
                width,
                vb.pp("position_embeddings"),
            )?,
            token_type,
            layer_norm: LayerNorm::new(width, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: Dropout::new(cfg.hidden_dropout_prob, rng),
            projection,
            padding_position: cfg.position_padding_index(),
        })
    }

    fn forward(&self, input: &BertInput, mode: Mode) -> Result<Tensor> {
        let seq_len = input.input_ids.dim(1)?;
        let device = input.input_ids.device();
        let words = self.word.forward(&input.input_ids)?;
        let xs = match self.padding_position {
            None => {
                let positions = Tensor::arange(0u32, seq_len as u32, device)?;
                words.broadcast_add(&self.position.forward(&positions)?)?
            }
            // As transformers counts: real tokens from the padding index plus one, padding
            // at the padding index.
            Some(padding) => {
                let mask = input.attention_mask.to_dtype(DType::F32)?;
                let counted = mask.cumsum(1)?.mul(&mask)?;
                let positions = (counted + padding as f64)?
                    .mul(&mask)?
                    .add(&((1.0 - &mask)? * padding as f64)?)?
                    .to_dtype(DType::U32)?;
                (words + self.position.forward(&positions)?)?
            }
        };
        let xs = match &self.token_type {
            Some(table) if table.embeddings().dim(0)? > 1 => {
                (xs + table.forward(&input.token_type_ids)?)?
            }
            // One type: every token's, whatever ids the tokenizer gave.
            Some(table) => xs.broadcast_add(&table.embeddings().get(0)?)?,
            None => xs,
        };
        let xs = self.layer_norm.forward(&xs)?;
        let xs = self.dropout.forward(&xs, mode)?;
        match &self.projection {
            Some(projection) => projection.forward(&xs),
            None => Ok(xs),
        }
    }
}

/// MPNet's relative-position attention bias, one table of `[buckets, heads]` shared by every
/// layer.
struct RelativeBias {
    table: Tensor,
}

impl RelativeBias {
    fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let table = vb.get_with_hints(
            (cfg.relative_attention_buckets(), cfg.num_attention_heads),
            "weight",
            Init::Const(0.0),
        )?;
        Ok(Self { table })
    }

    /// The bias of every head, `[heads, seq_q, seq_k]`, for queries at the first `seq_q`
    /// positions.
    fn forward(&self, seq_q: usize, seq_k: usize) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..seq_q)
            .flat_map(|q| {
                (0..seq_k).map(move |k| relative_position_bucket(k as i64 - q as i64) as u32)
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, seq_q * seq_k, self.table.device())?;
        let heads = self.table.dim(1)?;
        Ok(self
            .table
            .index_select(&buckets, 0)?
            .reshape((seq_q, seq_k, heads))?
            .permute((2, 0, 1))?
            // Contiguous once here, for the layers that select their heads' rows of it.
            .contiguous()?)
    }
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_heads: usize,
    head_dim: usize,
    dropout: Dropout,
    /// The original indices of the heads left, where some were pruned: they choose this
    /// layer's rows of a relative-position bias.
    remaining_heads: Option<Tensor>,
}

/// What one attention block computes, with its scores and probabilities and its projections
/// when kept for the losses.
struct AttentionOutput {
    context: Tensor,
    maps: Option<(Tensor, Tensor)>,
    projections: Option<AttentionProjections>,
}

impl SelfAttention {
    /// Layer `layer`'s attention: fewer heads where `pruned_heads` removed some.
    fn new(cfg: &BertConfig, layer: usize, vb: VarBuilder, rng: &DropoutRng) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let (num_heads, head_dim) = (cfg.heads_in_layer(layer), cfg.head_dim());
        let width = num_heads * head_dim;
        let remaining_heads = match num_heads < cfg.num_attention_heads {
            true => {
                let heads: Vec<u32> = cfg
                    .remaining_heads(layer)
                    .iter()
                    .map(|&h| h as u32)
                    .collect();
                Some(Tensor::new(heads, vb.device())?)
            }
            false => None,
        };
        Ok(Self {
            query: Linear::new(hidden, width, vb.pp("query"))?,
            key: Linear::new(hidden, width, vb.pp("key"))?,
            value: Linear::new(hidden, width, vb.pp("value"))?,
            num_heads,
            head_dim,
            dropout: Dropout::new(cfg.attention_probs_dropout_prob, rng),
            remaining_heads,
        })
    }

    fn freeze(&mut self, weights: FrozenWeights) -> Result<()> {
        for dense in [&mut self.query, &mut self.key, &mut self.value] {
            dense.freeze(weights)?;
        }
        Ok(())
    }

    /// What this layer adds to its attention scores, `[batch, seq_k]` (the mask, the same
    /// for every query and head) or `[batch, heads, seq_q, seq_q]` (with a relative-position
    /// bias), for `seq_q` queries.
    fn score_bias(&self, bias: &AttentionBias, seq_q: usize) -> Result<Tensor> {
        let Some(position) = &bias.position else {
            return Ok(bias.mask.clone());
        };
        let position = match &self.remaining_heads {
            Some(heads) => position.index_select(heads, 0)?,
            None => position.clone(),
        };
        let (batch, seq_k) = bias.mask.dims2()?;
        let position = position.narrow(1, 0, seq_q)?.unsqueeze(0)?;
        Ok(position
            .broadcast_add(&bias.mask.reshape((batch, 1, 1, seq_k))?)?
            .contiguous()?)
    }

    /// The attention of `queries`' positions over every position of `xs`. `head_mask`,
    /// `[heads]`, scales each head's output (HF's `head_mask`: 0 removes it).
    fn forward(
        &self,
        queries: &Tensor,
        xs: &Tensor,
        bias: &AttentionBias,
        head_mask: Option<&Tensor>,
        mode: Mode,
        maps: AttentionMaps,
    ) -> Result<AttentionOutput> {
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let q = self.query.forward(queries)?;
        let k = self.key.forward(xs)?;
        let v = self.value.forward(xs)?;
        let mask_bias = &self.score_bias(bias, queries.dim(1)?)?;
        // The fused attention takes a bias but gives it no gradient: a trainable relative-
        // position bias goes through the ops that keep the maps.
        let computes_maps =
            maps.keeps_scores() || (bias.position.is_some() && mode.differentiable());
        let (mut context, mut scores_and_probs) = match computes_maps {
            true => {
                let scores = kernels::scores(&q, &k, mask_bias, self.num_heads, scale)?;
                let probs = kernels::softmax_last_dim(&scores)?;
                let context = kernels::context(&self.dropout.forward(&probs, mode)?, &v)?;
                (context, Some((scores, probs)))
            }
            false => {
                let dropout = self.dropout.draw(mode);
                let context = kernels::attention(
                    &q,
                    &k,
                    &v,
                    mask_bias,
                    self.num_heads,
                    scale,
                    dropout,
                    mode.differentiable(),
                )?;
                (context, None)
            }
        };
        if !maps.keeps_scores() {
            scores_and_probs = None;
        }
        if let Some(mask) = head_mask {
            let (batch, seq, width) = context.dims3()?;
            let per_head = mask
                .reshape((1, 1, self.num_heads, 1))?
                .to_dtype(context.dtype())?;
            context = context
                .reshape((batch, seq, self.num_heads, self.head_dim))?
                .broadcast_mul(&per_head)?
                .reshape((batch, seq, width))?;
        }
        let projections = maps.keeps_projections().then_some(AttentionProjections {
            query: q,
            key: k,
            value: v,
        });
        Ok(AttentionOutput {
            context,
            maps: scores_and_probs,
            projections,
        })
    }
}

/// A dense projection added back to its input, then normalised (HF's `*Output` blocks).
struct ResidualNorm {
    dense: Linear,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl ResidualNorm {
    fn new(cfg: &BertConfig, in_dim: usize, vb: VarBuilder, rng: &DropoutRng) -> Result<Self> {
        Ok(Self {
            dense: Linear::new(in_dim, cfg.hidden_size, vb.pp("dense"))?,
            layer_norm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: Dropout::new(cfg.hidden_dropout_prob, rng),
        })
    }

    fn freeze(&mut self, weights: FrozenWeights) -> Result<()> {
        self.dense.freeze(weights)
    }

    fn forward(&self, xs: &Tensor, residual: &Tensor, mode: Mode) -> Result<Tensor> {
        let xs = self.dropout.forward(&self.dense.forward(xs)?, mode)?;
        self.layer_norm.forward(&(xs + residual)?)
    }
}

struct Layer {
    attention: SelfAttention,
    attention_output: ResidualNorm,
    intermediate: Linear,
    activation: Activation,
    output: ResidualNorm,
}

/// The feed-forward activation, `hidden_act` in the config.
#[derive(Clone, Copy)]
pub(crate) enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    pub(crate) fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Self::GeluErf,
            "gelu_new" => Self::GeluTanh,
            "relu" => Self::Relu,
            other => bail!("unsupported hidden_act {other:?}"),
        })
    }

    pub(crate) fn forward(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::GeluErf => kernels::gelu_erf(xs)?,
            Self::GeluTanh => xs.gelu()?,
            Self::Relu => xs.relu()?,
        })
    }
}

impl Layer {
    fn new(cfg: &BertConfig, layer: usize, vb: VarBuilder, rng: &DropoutRng) -> Result<Self> {
        let attention = vb.pp("attention");
        let width = cfg.heads_in_layer(layer) * cfg.head_dim();
        Ok(Self {
            attention: SelfAttention::new(cfg, layer, attention.pp("self"), rng)?,
            attention_output: ResidualNorm::new(cfg, width, attention.pp("output"), rng)?,
            intermediate: Linear::new(
                cfg.hidden_size,
                cfg.intermediate_size,
                vb.pp("intermediate").pp("dense"),
            )?,
            activation: Activation::from_name(&cfg.hidden_act)?,
            output: ResidualNorm::new(cfg, cfg.intermediate_size, vb.pp("output"), rng)?,
        })
    }

    fn freeze(&mut self, weights: FrozenWeights) -> Result<()> {
        self.attention.freeze(weights)?;
        self.attention_output.freeze(weights)?;
        self.intermediate.freeze(weights)?;
        self.output.freeze(weights)
    }

    fn forward(
        &self,
        xs: &Tensor,
        positions: LastLayer,
        bias: &AttentionBias,
        masks: LayerMasks,
        mode: Mode,
        maps: AttentionMaps,
    ) -> Result<(Tensor, AttentionOutput)> {
        let queries = match positions {
            LastLayer::AllPositions => xs.clone(),
            LastLayer::ClsOnly => xs.narrow(1, 0, 1)?.contiguous()?,
        };
        let attention = self
            .attention
            .forward(&queries, xs, bias, masks.heads, mode, maps)?;
        let attended = self
            .attention_output
            .forward(&attention.context, &queries, mode)?;
        let mut inner = self
            .activation
            .forward(&self.intermediate.forward(&attended)?)?;
        if let Some(mask) = masks.neurons {
            inner = inner.broadcast_mul(&mask.to_dtype(inner.dtype())?)?;
        }
        let out = self.output.forward(&inner, &attended, mode)?;
        Ok((out, attention))
    }
}

/// One layer's share of [`Masks`].
#[derive(Clone, Copy)]
struct LayerMasks<'a> {
    heads: Option<&'a Tensor>,
    neurons: Option<&'a Tensor>,
}

/// What every layer's attention scores get added: the padding mask, `[batch, seq_k]`, and
/// MPNet's relative-position bias of every head, `[heads, seq, seq]`.
struct AttentionBias {
    mask: Tensor,
    position: Option<Tensor>,
}

/// The dense layer on [CLS]: BERT's pooler, and the first layer of the other families'
/// classification heads (see [`crate::family`]).
struct Pooler {
    dense: Linear,
    activation: HeadActivation,
    /// The dropout on [CLS] before the dense layer, in the heads that have it.
    dropout: Option<Dropout>,
}

impl Pooler {
    fn forward(&self, cls: &Tensor, mode: Mode) -> Result<Tensor> {
        let cls = match &self.dropout {
            Some(dropout) => dropout.forward(cls, mode)?,
            None => cls.clone(),
        };
        let xs = self.dense.forward(&cls)?;
        Ok(match self.activation {
            HeadActivation::Tanh => xs.tanh()?,
            HeadActivation::Relu => xs.relu()?,
            HeadActivation::Gelu => kernels::gelu_erf(&xs)?,
        })
    }
}

/// The BERT encoder.
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Option<Pooler>,
    relative_bias: Option<RelativeBias>,
    config: BertConfig,
    dropout_rng: DropoutRng,
    frozen: bool,
    /// What the layers' products compute in.
    precision: Precision,
}

impl BertModel {
    /// Builds the encoder under `vb` (HF names, e.g. `vb.pp("bert")` for a task model).
    /// `with_pooler` adds the `pooler.dense` layer.
    pub fn new(config: &BertConfig, vb: VarBuilder, with_pooler: bool) -> Result<Self> {
        config.validate()?;
        let dropout_rng = DropoutRng::new(0);
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(config, i, vb.pp(format!("encoder.layer.{i}")), &dropout_rng))
            .collect::<Result<_>>()?;
        let family = config.family();
        let pooler = if with_pooler {
            Some(Pooler {
                dense: Linear::new(
                    config.hidden_size,
                    config.hidden_size,
                    vb.pp("pooler.dense"),
                )?,
                activation: family.head_activation(),
                dropout: family
                    .dropout_before_head()
                    .then(|| Dropout::new(config.classifier_dropout(), &dropout_rng)),
            })
        } else {
            None
        };
        let relative_bias = match family.relative_attention() {
            true => Some(RelativeBias::new(
                config,
                vb.pp("encoder.relative_attention_bias"),
            )?),
            false => None,
        };
        Ok(Self {
            embeddings: Embeddings::new(config, vb.pp("embeddings"), &vb, &dropout_rng)?,
            layers,
            pooler,
            relative_bias,
            config: config.clone(),
            dropout_rng,
            frozen: false,
            precision: Precision::F32,
        })
    }

    /// Prepares the model for inference only: each dense layer keeps a copy of its weight laid
    /// out for the matrix product (see [`Linear::freeze`]). A snapshot: later changes to the
    /// parameters are not seen, and a frozen model refuses to train.
    pub fn freeze(&mut self, weights: FrozenWeights) -> Result<()> {
        for layer in &mut self.layers {
            layer.freeze(weights)?;
        }
        if let Some(pooler) = &mut self.pooler {
            pooler.dense.freeze(weights)?;
        }
        if let Some(projection) = &mut self.embeddings.projection {
            projection.freeze(weights)?;
        }
        self.frozen = true;
        Ok(())
    }

    /// Runs the layers' products in `precision` from the next forward pass on. The
    /// parameters stay f32, and so does everything the pass hands out.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The input word embeddings, `[vocab, hidden]`.
    pub fn word_embeddings(&self) -> &Tensor {
        self.embeddings.word.embeddings()
    }

    /// The generator behind every dropout of this model.
    pub fn dropout_rng(&self) -> &DropoutRng {
        &self.dropout_rng
    }

    /// Every intermediate, the attention maps included.
    pub fn forward(&self, input: &BertInput, mode: Mode) -> Result<BertOutput> {
        self.forward_with(input, mode, AttentionMaps::Keep)
    }

    /// [`BertModel::forward`], with the attention maps kept or not.
    pub fn forward_with(
        &self,
        input: &BertInput,
        mode: Mode,
        maps: AttentionMaps,
    ) -> Result<BertOutput> {
        self.forward_masked(input, Masks::default(), mode, LastLayer::AllPositions, maps)
    }

    /// [`BertModel::forward`] with each layer's heads and feed-forward neurons scaled by
    /// `masks` (0 masks a part out, and a variable gives each part's gradient), the last
    /// layer computed at `last`'s positions.
    pub fn forward_masked(
        &self,
        input: &BertInput,
        masks: Masks,
        mode: Mode,
        last: LastLayer,
        maps: AttentionMaps,
    ) -> Result<BertOutput> {
        for (what, mask) in [("head", masks.heads), ("neuron", masks.neurons)] {
            if let Some(mask) = mask
                && mask.len() != self.layers.len()
            {
                bail!(
                    "a {what} mask of {} layers for {} layers",
                    mask.len(),
                    self.layers.len()
                );
            }
        }
        if let Some(mask) = masks.neurons
            && let Some(wrong) = mask
                .iter()
                .find(|m| m.elem_count() != self.config.intermediate_size)
        {
            bail!(
                "a neuron mask of {} values for {} feed-forward neurons a layer",
                wrong.elem_count(),
                self.config.intermediate_size
            );
        }
        if self.frozen && mode.differentiable() {
            bail!("a model frozen for inference cannot train");
        }
        let (_, seq_len) = input.input_ids.dims2()?;
        if seq_len > self.config.max_sequence_length() {
            bail!(
                "sequence of {seq_len} tokens exceeds the {} positions of the model",
                self.config.max_sequence_length()
            );
        }
        // Padding keys get the most negative value of the compute dtype added to their
        // scores, as HF does, so that their probability is exactly zero.
        let compute = self.precision.compute_dtype();
        let mask_bias = ((1.0 - input.attention_mask.to_dtype(DType::F32)?)?
            * most_negative(compute))?
        .to_dtype(compute)?;
        let bias = AttentionBias {
            mask: mask_bias,
            position: match &self.relative_bias {
                Some(table) => Some(table.forward(seq_len, seq_len)?.to_dtype(compute)?),
                None => None,
            },
        };
        // Without gradients, cutting the graph after each layer frees the layer's
        // intermediates as soon as the next one has read its output.
        let keep = |xs: Tensor| {
            if mode.differentiable() {
                xs
            } else {
                xs.detach()
            }
        };
        let embeddings = keep(self.embeddings.forward(input, mode)?);
        let mut hidden_states = Vec::with_capacity(self.layers.len());
        let mut attention_scores = Vec::with_capacity(self.layers.len());
        let mut attention_probs = Vec::with_capacity(self.layers.len());
        let mut attention_projections = Vec::new();
        // The layers compute in `compute`; what the pass hands out is f32, for the heads and
        // the losses to reduce in f32.
        let handed_out = |xs: &Tensor| xs.to_dtype(DType::F32);
        let mut xs = embeddings.to_dtype(compute)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let layer_masks = LayerMasks {
                heads: masks.heads.map(|mask| &mask[index]),
                neurons: masks.neurons.map(|mask| &mask[index]),
            };
            let positions = if index + 1 == self.layers.len() {
                last
            } else {
                LastLayer::AllPositions
            };
            let (out, attention) = layer.forward(&xs, positions, &bias, layer_masks, mode, maps)?;
            let out = keep(out);
            hidden_states.push(handed_out(&out)?);
            if let Some((scores, probs)) = attention.maps {
                attention_scores.push(keep(handed_out(&scores)?));
                attention_probs.push(keep(handed_out(&probs)?));
            }
            if let Some(projections) = &attention.projections {
                attention_projections.push(projections.map(|xs| Ok(keep(handed_out(xs)?)))?);
            }
            xs = out;
        }
        let pooled = match &self.pooler {
            Some(pooler) => {
                let cls = xs.narrow(1, 0, 1)?.squeeze(1)?;
                Some(handed_out(&pooler.forward(&cls, mode)?)?)
            }
            None => None,
        };
        Ok(BertOutput {
            embeddings,
            hidden_states,
            attention_scores,
            attention_probs,
            attention_projections,
            pooled,
        })
    }
}
