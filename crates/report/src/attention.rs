//! `kd attention`: what a head attends to, drawn with the tokens on both axes.

use crate::charts;
use crate::heads::{Matrix, describe};
use anyhow::{Context, Result, bail};
use clap::Args;
use kd_bert::Mode;
use kd_data::{EncodedExample, collate};
use kd_runner::options::DeviceArg;
use kd_teacher::Backbone;
use kd_train::RunDir;
use std::path::PathBuf;

/// The model, the text, which heads to draw, and where.
#[derive(Args)]
pub struct AttentionArgs {
    /// Any model kd loads (task model or encoder): hub id or directory.
    #[arg(long)]
    model: String,
    /// The text, and optionally a second one (a sentence pair).
    #[arg(required = true, num_args = 1..=2)]
    text: Vec<String>,
    /// One layer (from 0); every layer by default.
    #[arg(long)]
    layer: Option<usize>,
    /// One head of --layer (from 0); a grid of the layer's heads by default.
    #[arg(long, requires = "layer")]
    head: Option<usize>,
    /// Where to write the maps (refused when not empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    force: bool,
    #[arg(long, default_value_t = 128)]
    max_seq_len: usize,
    #[command(flatten)]
    device: DeviceArg,
}

/// `kd attention`: attention probabilities with the tokens on both axes (rows attend to
/// columns), a grid of each layer's heads (`layer-L`) or one head (`layer-L-head-H`).
pub fn run_attention(args: AttentionArgs) -> Result<()> {
    let device = args.device.select()?;
    let model = Backbone::open(&args.model, args.max_seq_len, &device)?;
    let encoded = model
        .tokenizer
        .encode(&args.text[0], args.text.get(1).map(String::as_str))?;
    let vocab = model.tokenizer.vocab();
    let tokens: Vec<String> = encoded
        .ids
        .iter()
        .map(|&id| {
            vocab
                .get(id as usize)
                .cloned()
                .unwrap_or_else(|| id.to_string())
        })
        .collect();
    let example = EncodedExample {
        ids: encoded.ids,
        type_ids: encoded.type_ids,
        label: kd_data::Label::Unlabeled,
    };
    let batch = collate(&[example], &[0], &device)?;
    let output = model.model.forward(&batch.input, Mode::Inference)?;
    let layers = output.attention_probs.len();
    let chosen: Vec<usize> = match args.layer {
        Some(layer) if layer >= layers => bail!("the model has {layers} layers: no layer {layer}"),
        Some(layer) => vec![layer],
        None => (0..layers).collect(),
    };
    // The head asked for, by its place among each layer's remaining heads: checked before
    // anything is written.
    let head_places: Vec<Option<(usize, usize)>> = chosen
        .iter()
        .map(|&layer| {
            let Some(head) = args.head else {
                return Ok(None);
            };
            let heads = model.config.remaining_heads(layer);
            let place = heads.iter().position(|&h| h == head);
            let place = place
                .with_context(|| format!("layer {layer} has no head {head} (it has {heads:?})"))?;
            anyhow::Ok(Some((head, place)))
        })
        .collect::<Result<_>>()?;
    let out = RunDir::create(&args.out, args.force)?;
    // Rows name their token; columns, too narrow for words, its number.
    let rows: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| format!("{token} {i}"))
        .collect();
    let axes = charts::HeatmapAxes {
        columns: "attended token (its number)",
        rows: "token",
        row_labels: &rows,
        values: tokens.len() <= 12,
    };
    let mut written = Vec::new();
    for (layer, head_place) in chosen.into_iter().zip(head_places) {
        // [heads, tokens, tokens]
        let probs = output.attention_probs[layer].squeeze(0)?.to_vec3::<f32>()?;
        let heads = model.config.remaining_heads(layer);
        let panel = |position: usize| -> Matrix {
            let rows = &probs[position];
            rows.iter()
                .map(|row| row.iter().map(|&p| Some(p as f64)).collect())
                .collect()
        };
        let (stem, panels) = match head_place {
            Some((head, place)) => (
                format!("layer-{layer}-head-{head}"),
                vec![(String::new(), panel(place))],
            ),
            None => {
                let panels = heads
                    .iter()
                    .enumerate()
                    .map(|(position, head)| (format!("head {head}"), panel(position)))
                    .collect();
                (format!("layer-{layer}"), panels)
            }
        };
        let title = match args.head {
            Some(head) => format!("attention of layer {layer}, head {head}"),
            None => format!("attention of layer {layer}"),
        };
        written.extend(charts::heatmaps(&out.join(&stem), &title, &axes, &panels)?);
    }
    eprintln!(
        "{} tokens; attention maps: {}",
        tokens.len(),
        describe(&written)
    );
    Ok(())
}
