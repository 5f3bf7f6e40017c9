//! Removing attention heads for good, as HF's `prune_heads` does: a pruned head's rows of the
//! query, key and value projections and its columns of the attention output go, and the
//! config records it in `pruned_heads`, so that the smaller model loads (here and in HF
//! transformers) and computes what the full one computes with those heads masked out.

use crate::config::BertConfig;
use anyhow::{Result, bail};
use candle_core::Tensor;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The config and parameters of the model of `config` with `parameters` (kd's names, or the
/// family's as a checkpoint has them), less the heads `remove` names: layer index to original head
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
    let head_shaped = head_shaped_parameters(config);
    let head_dim = config.head_dim();
    let mut out = Vec::with_capacity(parameters.len());
    for (name, tensor) in parameters {
        let Some(&(layer, part)) = head_shaped.get(name) else {
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
    let head_shaped = head_shaped_parameters(config);
    let head_dim = config.head_dim();
    let mut out = Vec::with_capacity(parameters.len());
    for (name, tensor) in parameters {
        let pruned = head_shaped
            .get(name)
            .copied()
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

/// The attention parameters whose shape depends on the heads, within a layer's attention.
const HEAD_SHAPED: [&str; 7] = [
    "self.query.weight",
    "self.query.bias",
    "self.key.weight",
    "self.key.bias",
    "self.value.weight",
    "self.value.bias",
    "output.dense.weight",
];

/// The layer and part (kd's name within `attention.`) of every parameter of `config`'s model
/// whose shape depends on the heads, under each name a checkpoint may give it: kd's
/// (`bert.encoder.layer.L.attention.self.query.weight`), the family's in a task model
/// (`distilbert.transformer.layer.L.attention.q_lin.weight`) and in a bare encoder.
fn head_shaped_parameters(config: &BertConfig) -> HashMap<String, (usize, &'static str)> {
    let family = config.family();
    let mut names = HashMap::new();
    for layer in 0..config.num_hidden_layers {
        for part in HEAD_SHAPED {
            let ours = format!("bert.encoder.layer.{layer}.attention.{part}");
            for name in family.checkpoint_names(&ours) {
                names.insert(name, (layer, part));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_head_shaped_attention_parameters_are_cut_under_any_familys_names() {
        let config = |model_type: &str| {
            let json = serde_json::json!({
                "model_type": model_type, "vocab_size": 10, "hidden_size": 8,
                "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 16,
                "max_position_embeddings": 16,
            });
            BertConfig::from_json(json.as_object().unwrap().clone()).unwrap()
        };
        let bert = head_shaped_parameters(&config("bert"));
        assert_eq!(
            bert.get("bert.encoder.layer.3.attention.self.key.bias"),
            Some(&(3, "self.key.bias"))
        );
        assert_eq!(
            bert.get("encoder.layer.0.attention.output.dense.weight"),
            Some(&(0, "output.dense.weight"))
        );
        for name in [
            "encoder.layer.0.attention.output.dense.bias",
            "encoder.layer.0.output.dense.weight",
            "bert.pooler.dense.weight",
        ] {
            assert_eq!(bert.get(name), None, "{name}");
        }
        let distilbert = head_shaped_parameters(&config("distilbert"));
        assert_eq!(
            distilbert.get("distilbert.transformer.layer.2.attention.q_lin.weight"),
            Some(&(2, "self.query.weight"))
        );
        assert_eq!(
            distilbert.get("distilbert.transformer.layer.2.attention.out_lin.bias"),
            None
        );
        let mpnet = head_shaped_parameters(&config("mpnet"));
        assert_eq!(
            mpnet.get("encoder.layer.1.attention.attn.o.weight"),
            Some(&(1, "output.dense.weight"))
        );
    }
}
