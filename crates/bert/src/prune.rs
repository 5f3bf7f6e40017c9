//! Removing attention heads for good, as HF's `prune_heads` does: a pruned head's rows of the
//! query, key and value projections and its columns of the attention output go, and the
//! config records it in `pruned_heads`, so that the smaller model loads (here and in HF
//! transformers) and computes what the full one computes with those heads masked out.

use crate::config::BertConfig;
use anyhow::{Result, bail};
use candle_core::Tensor;
use std::collections::{BTreeMap, BTreeSet};

/// The config and parameters of the model of `config` with `parameters` (HF names, with or
/// without the `bert.` prefix), less the heads `remove` names: layer index to original head
/// indices, as `pruned_heads` counts them. Heads already pruned, or a layer left without a
/// head, are errors.
pub fn prune_heads(
    config: &BertConfig,
    parameters: &[(String, Tensor)],
    remove: &BTreeMap<usize, BTreeSet<usize>>,
) -> Result<(BertConfig, Vec<(String, Tensor)>)> {
    let mut pruned = config.clone();
    // Per layer, the positions (among the heads it has now) of the heads it keeps.
    let mut kept_positions = BTreeMap::new();
    for (&layer, heads) in remove {
        if layer >= config.num_hidden_layers {
            bail!(
                "the model has {} layers: no layer {layer}",
                config.num_hidden_layers
            );
        }
        let remaining = config.remaining_heads(layer);
        if let Some(head) = heads.iter().find(|head| !remaining.contains(head)) {
            bail!("layer {layer} has no head {head} (it has {remaining:?})");
        }
        if heads.len() == remaining.len() {
            bail!("pruning {heads:?} would leave layer {layer} without a head");
        }
        let positions: Vec<u32> = (0..remaining.len() as u32)
            .filter(|&p| !heads.contains(&remaining[p as usize]))
            .collect();
        kept_positions.insert(layer, positions);
        let mut all: BTreeSet<usize> = config
            .pruned_heads
            .get(&layer.to_string())
            .into_iter()
            .flatten()
            .copied()
            .collect();
        all.extend(heads);
        pruned
            .pruned_heads
            .insert(layer.to_string(), all.into_iter().collect());
    }
    pruned.validate()?;
    let head_dim = config.head_dim();
    let mut out = Vec::with_capacity(parameters.len());
    for (name, tensor) in parameters {
        let Some((layer, part)) = attention_part(name) else {
            out.push((name.clone(), tensor.clone()));
            continue;
        };
        let Some(positions) = kept_positions.get(&layer) else {
            out.push((name.clone(), tensor.clone()));
            continue;
        };
        let rows: Vec<u32> = positions
            .iter()
            .flat_map(|&p| p * head_dim as u32..(p + 1) * head_dim as u32)
            .collect();
        let rows = Tensor::new(rows, tensor.device())?;
        // The projections' outputs are rows; the attention output reads them as columns.
        let dim = match part {
            "output.dense.weight" => 1,
            _ => 0,
        };
        out.push((name.clone(), tensor.index_select(&rows, dim)?));
    }
    Ok((pruned, out))
}

/// The model of `config` (pruned) at full shape again: each pruned head's rows of the query,
/// key and value and its columns of the attention output come back as zeros (a zero value
/// and output make a head add nothing, as if pruned) and `pruned_heads` is emptied, for tools
/// that do not prune heads (transformers 5, ONNX graphs).
pub fn restore_heads(
    config: &BertConfig,
    parameters: &[(String, Tensor)],
) -> Result<(BertConfig, Vec<(String, Tensor)>)> {
    let head_dim = config.head_dim();
    let mut out = Vec::with_capacity(parameters.len());
    for (name, tensor) in parameters {
        let pruned = attention_part(name)
            .filter(|(layer, _)| config.heads_in_layer(*layer) < config.num_attention_heads);
        let Some((layer, part)) = pruned else {
            out.push((name.clone(), tensor.clone()));
            continue;
        };
        let dim = match part {
            "output.dense.weight" => 1,
            _ => 0,
        };
        let remaining = config.remaining_heads(layer);
        let mut zero_shape = tensor.dims().to_vec();
        zero_shape[dim] = head_dim;
        let zeros = Tensor::zeros(zero_shape, tensor.dtype(), tensor.device())?;
        let pieces = (0..config.num_attention_heads)
            .map(|head| match remaining.iter().position(|&h| h == head) {
                Some(position) => tensor.narrow(dim, position * head_dim, head_dim),
                None => Ok(zeros.clone()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        out.push((name.clone(), Tensor::cat(&pieces, dim)?));
    }
    let mut restored = config.clone();
    restored.pruned_heads.clear();
    Ok((restored, out))
}

/// The layer and part of an attention parameter whose shape depends on the heads:
/// `encoder.layer.L.attention.{self.query|self.key|self.value}.{weight|bias}` or
/// `encoder.layer.L.attention.output.dense.weight`.
fn attention_part(name: &str) -> Option<(usize, &str)> {
    let rest = &name[name.find("encoder.layer.")? + "encoder.layer.".len()..];
    let (layer, rest) = rest.split_once('.')?;
    let part = rest.strip_prefix("attention.")?;
    let shaped = matches!(
        part,
        "self.query.weight"
            | "self.query.bias"
            | "self.key.weight"
            | "self.key.bias"
            | "self.value.weight"
            | "self.value.bias"
            | "output.dense.weight"
    );
    shaped.then_some((layer.parse().ok()?, part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_head_shaped_attention_parameters_are_cut() {
        assert_eq!(
            attention_part("bert.encoder.layer.3.attention.self.key.bias"),
            Some((3, "self.key.bias"))
        );
        assert_eq!(
            attention_part("encoder.layer.0.attention.output.dense.weight"),
            Some((0, "output.dense.weight"))
        );
        assert_eq!(
            attention_part("encoder.layer.0.attention.output.dense.bias"),
            None
        );
        assert_eq!(attention_part("encoder.layer.0.output.dense.weight"), None);
        assert_eq!(attention_part("bert.pooler.dense.weight"), None);
    }
}
