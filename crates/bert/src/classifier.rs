//! BERT with a sequence-classification (or regression) head, HF's
//! `BertForSequenceClassification`: pooled [CLS] output, dropout, then a linear layer.

use crate::config::BertConfig;
use crate::layers::{Dropout, FrozenWeights, Linear, Mode};
use crate::model::{AttentionMaps, BertInput, BertModel, BertOutput, LastLayer, Masks};
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;

pub struct BertForSequenceClassification {
    pub bert: BertModel,
    dropout: Dropout,
    classifier: Linear,
}

impl BertForSequenceClassification {
    /// Builds the model under `vb` with HF's names: `bert.*` and `classifier.*`.
    pub fn new(config: &BertConfig, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        let bert = BertModel::new(config, vb.pp("bert"), true)?;
        let dropout = Dropout::new(config.classifier_dropout(), bert.dropout_rng());
        let classifier = Linear::new(config.hidden_size, num_labels, vb.pp("classifier"))?;
        Ok(Self {
            bert,
            dropout,
            classifier,
        })
    }

    /// Prepares the model for inference only (see [`BertModel::freeze`]).
    pub fn freeze(&mut self, weights: FrozenWeights) -> Result<()> {
        self.bert.freeze(weights)?;
        self.classifier.freeze(weights)
    }

    /// Returns the logits, `[batch, num_labels]`, and every encoder intermediate.
    pub fn forward(&self, input: &BertInput, mode: Mode) -> Result<(Tensor, BertOutput)> {
        self.forward_with(input, mode, AttentionMaps::Keep)
    }

    /// [`Self::forward`], with the attention maps kept or not.
    pub fn forward_with(
        &self,
        input: &BertInput,
        mode: Mode,
        maps: AttentionMaps,
    ) -> Result<(Tensor, BertOutput)> {
        self.forward_masked(input, Masks::default(), mode, LastLayer::AllPositions, maps)
    }

    /// [`Self::forward`] with attention heads scaled by `head_mask` (see
    /// [`BertModel::forward_masked`]).
    pub fn forward_with_head_mask(
        &self,
        input: &BertInput,
        head_mask: Option<&[Tensor]>,
        mode: Mode,
    ) -> Result<(Tensor, BertOutput)> {
        self.forward_masked(
            input,
            Masks::heads(head_mask),
            mode,
            LastLayer::AllPositions,
            AttentionMaps::Keep,
        )
    }

    /// The logits alone: the same numbers as [`Self::forward_with_head_mask`]'s, for less
    /// work: the last layer computed at [CLS] only ([`LastLayer::ClsOnly`]), no attention map
    /// written out ([`AttentionMaps::Skip`]).
    pub fn logits(
        &self,
        input: &BertInput,
        head_mask: Option<&[Tensor]>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.logits_masked(input, Masks::heads(head_mask), mode)
    }

    /// [`Self::logits`] with heads and feed-forward neurons scaled by `masks`.
    pub fn logits_masked(&self, input: &BertInput, masks: Masks, mode: Mode) -> Result<Tensor> {
        Ok(self
            .forward_masked(input, masks, mode, LastLayer::ClsOnly, AttentionMaps::Skip)?
            .0)
    }

    /// The logits and every encoder intermediate, heads and feed-forward neurons scaled by
    /// `masks` (see [`BertModel::forward_masked`]), the last layer at `last`'s positions.
    pub fn forward_masked(
        &self,
        input: &BertInput,
        masks: Masks,
        mode: Mode,
        last: LastLayer,
        maps: AttentionMaps,
    ) -> Result<(Tensor, BertOutput)> {
        let output = self.bert.forward_masked(input, masks, mode, last, maps)?;
        let pooled = output.pooled.as_ref().expect("built with a pooler");
        let logits = self
            .classifier
            .forward(&self.dropout.forward(pooled, mode)?)?;
        Ok((logits, output))
    }
}
