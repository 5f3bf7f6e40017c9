//! Removing attention heads for good, as HF's `prune_heads` does: a pruned head's rows of the
//! query, key and value projections and its columns of the attention output go, and the
//! config records it in `pruned_heads`, so that the smaller model loads (here and in HF
//! transformers) and computes what the full one computes with those heads masked out.
//! Feed-forward neurons go the same way: a pruned neuron's row of `intermediate.dense` and
//! column of `output.dense` go, the same count in every layer, so that the config records it
//! as a smaller `intermediate_size` (and the model computes what the full one computes with
//! those neurons' activations masked to zero).

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
    let head_dim = config.head_dim() as u32;
    let kept: BTreeMap<usize, Vec<u32>> = kept_positions
        .into_iter()
        .map(|(layer, positions)| {
            let rows = positions
                .iter()
                .flat_map(|&p| p * head_dim..(p + 1) * head_dim)
                .collect();
            (layer, rows)
        })
        .collect();
    let out = cut(parameters, &layer_parameters(config, &HEAD_SHAPED), &kept)?;
    Ok((pruned, out))
}

/// The config and parameters of the model of `config` with `parameters` (kd's names, or the
/// family's), keeping of each layer's feed-forward neurons only those `keep` lists (one list a
/// layer, positions in the current `intermediate_size`, the same count in every layer, at
/// least one): the config's `intermediate_size` becomes that count.
pub fn prune_ffn(
    config: &BertConfig,
    parameters: &[(String, Tensor)],
    keep: &[BTreeSet<usize>],
) -> Result<(BertConfig, Vec<(String, Tensor)>)> {
    if keep.len() != config.num_hidden_layers {
        bail!(
            "neurons to keep for {} layers of a model of {}",
            keep.len(),
            config.num_hidden_layers
        );
    }
    let size = keep[0].len();
    if size == 0 || size > config.intermediate_size {
        bail!(
            "keeping {size} feed-forward neurons a layer: the model has {} (keep 1 at least)",
            config.intermediate_size
        );
    }
    let mut kept = BTreeMap::new();
    for (layer, neurons) in keep.iter().enumerate() {
        if neurons.len() != size {
            bail!(
                "layer {layer} keeps {} feed-forward neurons and layer 0 {size}: every layer \
                 keeps the same count",
                neurons.len()
            );
        }
        if let Some(neuron) = neurons.iter().find(|&&n| n >= config.intermediate_size) {
            bail!(
                "layer {layer} has no neuron {neuron} (it has {})",
                config.intermediate_size
            );
        }
        kept.insert(layer, neurons.iter().map(|&n| n as u32).collect());
    }
    let mut pruned = config.clone();
    pruned.intermediate_size = size;
    pruned.validate()?;
    let out = cut(parameters, &layer_parameters(config, &FFN_SHAPED), &kept)?;
    Ok((pruned, out))
}

/// `parameters` with those that `shaped` names (layer, and the dimension that is cut) cut
/// down to the indices `kept` gives for their layer; the others as they are.
fn cut(
    parameters: &[(String, Tensor)],
    shaped: &HashMap<String, (usize, usize)>,
    kept: &BTreeMap<usize, Vec<u32>>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(parameters.len());
    for (name, tensor) in parameters {
        let indices = shaped
            .get(name)
            .and_then(|&(layer, dim)| Some((kept.get(&layer)?, dim)));
        let Some((indices, dim)) = indices else {
            out.push((name.clone(), tensor.clone()));
            continue;
        };
        let indices = Tensor::new(indices.as_slice(), tensor.device())?;
        out.push((name.clone(), tensor.index_select(&indices, dim)?));
    }
    Ok(out)
}

/// The model of `config` (pruned) at full shape again: each pruned head's rows of the query,
/// key and value and its columns of the attention output come back as zeros (a zero value
/// and output make a head add nothing, as if pruned) and `pruned_heads` is emptied, for tools
/// that do not prune heads (transformers 5, ONNX graphs).
pub fn restore_heads(
    config: &BertConfig,
    parameters: &[(String, Tensor)],
) -> Result<(BertConfig, Vec<(String, Tensor)>)> {
    let head_shaped = layer_parameters(config, &HEAD_SHAPED);
    let head_dim = config.head_dim();
    let mut out = Vec::with_capacity(parameters.len());
    for (name, tensor) in parameters {
        let pruned = head_shaped
            .get(name)
            .copied()
            .filter(|(layer, _)| config.heads_in_layer(*layer) < config.num_attention_heads);
        let Some((layer, dim)) = pruned else {
            out.push((name.clone(), tensor.clone()));
            continue;
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

/// The parameters of a layer whose shape depends on its heads (kd's names within
/// `encoder.layer.L.`), and the dimension that runs over the heads: the projections' outputs
/// are rows; the attention output reads them as columns.
const HEAD_SHAPED: [(&str, usize); 7] = [
    ("attention.self.query.weight", 0),
    ("attention.self.query.bias", 0),
    ("attention.self.key.weight", 0),
    ("attention.self.key.bias", 0),
    ("attention.self.value.weight", 0),
    ("attention.self.value.bias", 0),
    ("attention.output.dense.weight", 1),
];

/// The parameters of a layer whose shape depends on its feed-forward neurons, and the
/// dimension that runs over them: `intermediate.dense` writes them as rows, `output.dense`
/// reads them as columns.
const FFN_SHAPED: [(&str, usize); 3] = [
    ("intermediate.dense.weight", 0),
    ("intermediate.dense.bias", 0),
    ("output.dense.weight", 1),
];

/// The layer and cut dimension of every parameter of `config`'s model that `parts` names
/// (within a layer), under each name a checkpoint may give it: kd's
/// (`bert.encoder.layer.L.attention.self.query.weight`), the family's in a task model
/// (`distilbert.transformer.layer.L.attention.q_lin.weight`) and in a bare encoder.
fn layer_parameters(
    config: &BertConfig,
    parts: &[(&str, usize)],
) -> HashMap<String, (usize, usize)> {
    let family = config.family();
    let mut names = HashMap::new();
    for layer in 0..config.num_hidden_layers {
        for &(part, dim) in parts {
            let ours = format!("bert.encoder.layer.{layer}.{part}");
            for name in family.checkpoint_names(&ours) {
                names.insert(name, (layer, dim));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(model_type: &str) -> BertConfig {
        let json = serde_json::json!({
            "model_type": model_type, "vocab_size": 10, "hidden_size": 8,
            "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 16,
        });
        BertConfig::from_json(json.as_object().unwrap().clone()).unwrap()
    }

    #[test]
    fn only_the_head_shaped_attention_parameters_are_cut_under_any_familys_names() {
        let bert = layer_parameters(&config("bert"), &HEAD_SHAPED);
        assert_eq!(
            bert.get("bert.encoder.layer.3.attention.self.key.bias"),
            Some(&(3, 0))
        );
        assert_eq!(
            bert.get("encoder.layer.0.attention.output.dense.weight"),
            Some(&(0, 1))
        );
        for name in [
            "encoder.layer.0.attention.output.dense.bias",
            "encoder.layer.0.output.dense.weight",
            "bert.pooler.dense.weight",
        ] {
            assert_eq!(bert.get(name), None, "{name}");
        }
        let distilbert = layer_parameters(&config("distilbert"), &HEAD_SHAPED);
        assert_eq!(
            distilbert.get("distilbert.transformer.layer.2.attention.q_lin.weight"),
            Some(&(2, 0))
        );
        assert_eq!(
            distilbert.get("distilbert.transformer.layer.2.attention.out_lin.bias"),
            None
        );
        let mpnet = layer_parameters(&config("mpnet"), &HEAD_SHAPED);
        assert_eq!(
            mpnet.get("encoder.layer.1.attention.attn.o.weight"),
            Some(&(1, 1))
        );
    }

    #[test]
    fn only_the_feed_forward_parameters_are_cut_under_any_familys_names() {
        let bert = layer_parameters(&config("bert"), &FFN_SHAPED);
        assert_eq!(
            bert.get("bert.encoder.layer.3.intermediate.dense.bias"),
            Some(&(3, 0))
        );
        assert_eq!(
            bert.get("encoder.layer.1.output.dense.weight"),
            Some(&(1, 1))
        );
        for name in [
            "bert.encoder.layer.1.output.dense.bias",
            "bert.encoder.layer.1.attention.output.dense.weight",
            "bert.encoder.layer.1.output.LayerNorm.weight",
        ] {
            assert_eq!(bert.get(name), None, "{name}");
        }
        let distilbert = layer_parameters(&config("distilbert"), &FFN_SHAPED);
        assert_eq!(
            distilbert.get("distilbert.transformer.layer.2.ffn.lin1.weight"),
            Some(&(2, 0))
        );
        assert_eq!(
            distilbert.get("transformer.layer.0.ffn.lin2.weight"),
            Some(&(0, 1))
        );
        assert_eq!(
            distilbert.get("distilbert.transformer.layer.2.ffn.lin2.bias"),
            None
        );
    }

    #[test]
    fn the_kept_neurons_rows_and_columns_are_kept_in_order() {
        let config = config("bert");
        let device = candle_core::Device::Cpu;
        let values = |rows: usize, cols: usize| {
            let data: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            Tensor::from_vec(data, (rows, cols), &device).unwrap()
        };
        let parameters = vec![
            (
                "bert.encoder.layer.0.intermediate.dense.weight".to_string(),
                values(16, 8),
            ),
            (
                "bert.encoder.layer.0.intermediate.dense.bias".to_string(),
                values(1, 16).squeeze(0).unwrap(),
            ),
            (
                "bert.encoder.layer.0.output.dense.weight".to_string(),
                values(8, 16),
            ),
            (
                "bert.encoder.layer.0.output.dense.bias".to_string(),
                values(1, 8).squeeze(0).unwrap(),
            ),
        ];
        let keep: Vec<BTreeSet<usize>> =
            vec![[2, 5].into(), [0, 15].into(), [1, 2].into(), [3, 4].into()];
        let (pruned, out) = prune_ffn(&config, &parameters, &keep).unwrap();
        assert_eq!(pruned.intermediate_size, 2);
        assert_eq!(
            out[0].1.to_vec2::<f32>().unwrap(),
            [
                (16..24).map(|v| v as f32).collect::<Vec<_>>(),
                (40..48).map(|v| v as f32).collect()
            ]
        );
        assert_eq!(out[1].1.to_vec1::<f32>().unwrap(), [2.0, 5.0]);
        assert_eq!(out[2].1.to_vec2::<f32>().unwrap()[1], [18.0, 21.0]);
        assert_eq!(out[3].1.dims(), [8]);
        // Uneven counts, none kept, or a neuron the model lacks are refused.
        for (keep, message) in [
            (
                vec![[1].into(), [1, 2].into(), [1].into(), [1].into()],
                "same count",
            ),
            (vec![BTreeSet::new(); 4], "keep 1 at least"),
            (vec![[16].into(); 4], "no neuron 16"),
        ] {
            let error = prune_ffn(&config, &parameters, &keep).unwrap_err();
            assert!(error.to_string().contains(message), "{error}");
        }
    }
}
