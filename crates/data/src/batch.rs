//! Batches: examples are grouped by length (bucketing) and padded only to the longest in
//! their batch, since most GLUE sentences are far shorter than the maximum length.

use crate::example::{Example, Label};
use crate::tokenizer::TextTokenizer;
use anyhow::Result;
use candle_core::{Device, Tensor};
use kd_bert::BertInput;
use rand::Rng;
use rand::seq::SliceRandom;

/// Batches in a shuffling pool: examples are sorted by length within pools of this many
/// batches, so batches are homogeneous in length yet still random.
const BUCKET_POOL_BATCHES: usize = 50;

#[derive(Debug, Clone)]
pub struct EncodedExample {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub label: Label,
}

pub fn encode_examples(
    tokenizer: &TextTokenizer,
    examples: &[Example],
) -> Result<Vec<EncodedExample>> {
    examples
        .iter()
        .map(|example| {
            let encoded = tokenizer.encode(&example.text, example.pair.as_deref())?;
            Ok(EncodedExample {
                ids: encoded.ids,
                type_ids: encoded.type_ids,
                label: example.label,
            })
        })
        .collect()
}

/// Splits example indices into batches of similar length. With a generator, the order is
/// random (shuffle, sort by length within pools, shuffle the batches); without, examples are
/// sorted by length, which is fastest for evaluation.
pub fn batch_plan(
    lengths: &[usize],
    batch_size: usize,
    rng: Option<&mut impl Rng>,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    match rng {
        Some(rng) => {
            order.shuffle(rng);
            for pool in order.chunks_mut(batch_size * BUCKET_POOL_BATCHES) {
                pool.sort_by_key(|&i| lengths[i]);
            }
            let mut batches: Vec<Vec<usize>> =
                order.chunks(batch_size).map(<[usize]>::to_vec).collect();
            batches.shuffle(rng);
            batches
        }
        None => {
            order.sort_by_key(|&i| lengths[i]);
            order.chunks(batch_size).map(<[usize]>::to_vec).collect()
        }
    }
}

/// A padded batch.
pub struct Batch {
    pub input: BertInput,
    /// `[batch]` u32 class ids or f32 scores (0 for unlabeled examples).
    pub labels: Tensor,
    /// `[batch]` u32, 1 for labelled examples; `None` when every example has a label.
    pub label_mask: Option<Tensor>,
    /// The examples' indices in their dataset.
    pub indices: Vec<usize>,
}

/// Pads the examples at `indices` to the longest of them.
pub fn collate(examples: &[EncodedExample], indices: &[usize], device: &Device) -> Result<Batch> {
    let seq_len = indices
        .iter()
        .map(|&i| examples[i].ids.len())
        .max()
        .unwrap_or(0);
    let size = indices.len() * seq_len;
    let (mut ids, mut type_ids, mut mask) = (
        Vec::with_capacity(size),
        Vec::with_capacity(size),
        Vec::with_capacity(size),
    );
    for &i in indices {
        let example = &examples[i];
        let padding = seq_len - example.ids.len();
        ids.extend(
            example
                .ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, padding)),
        );
        type_ids.extend(
            example
                .type_ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, padding)),
        );
        mask.extend(
            std::iter::repeat_n(1u32, example.ids.len()).chain(std::iter::repeat_n(0, padding)),
        );
    }
    let shape = (indices.len(), seq_len);
    let labels = indices.iter().map(|&i| examples[i].label);
    let labels = if labels.clone().any(|l| matches!(l, Label::Score(_))) {
        let scores: Vec<f32> = labels
            .map(|label| match label {
                Label::Score(s) => s,
                Label::Class(_) | Label::Unlabeled => 0.0,
            })
            .collect();
        Tensor::new(scores, device)?
    } else {
        let classes: Vec<u32> = labels
            .map(|label| match label {
                Label::Class(c) => c as u32,
                Label::Score(_) | Label::Unlabeled => 0,
            })
            .collect();
        Tensor::new(classes, device)?
    };
    let labelled: Vec<u32> = indices
        .iter()
        .map(|&i| u32::from(examples[i].label != Label::Unlabeled))
        .collect();
    let label_mask = if labelled.contains(&0) {
        Some(Tensor::new(labelled, device)?)
    } else {
        None
    };
    Ok(Batch {
        input: BertInput {
            input_ids: Tensor::from_vec(ids, shape, device)?,
            token_type_ids: Tensor::from_vec(type_ids, shape, device)?,
            attention_mask: Tensor::from_vec(mask, shape, device)?,
        },
        labels,
        label_mask,
        indices: indices.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn example(len: usize, class: usize) -> EncodedExample {
        EncodedExample {
            ids: (1..=len as u32).collect(),
            type_ids: vec![0; len],
            label: Label::Class(class),
        }
    }

    #[test]
    fn plan_covers_every_example_once_and_buckets_lengths() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 97 + 3).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let plan = batch_plan(&lengths, 8, Some(&mut rng));
        let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        // Bucketing: padding waste is far below that of random batches.
        let waste = |plan: &[Vec<usize>]| -> usize {
            plan.iter()
                .map(|b| {
                    let max = b.iter().map(|&i| lengths[i]).max().unwrap();
                    b.iter().map(|&i| max - lengths[i]).sum::<usize>()
                })
                .sum()
        };
        let random: Vec<Vec<usize>> = (0..1000)
            .collect::<Vec<_>>()
            .chunks(8)
            .map(<[usize]>::to_vec)
            .collect();
        assert!(
            waste(&plan) * 5 < waste(&random),
            "{} vs {}",
            waste(&plan),
            waste(&random)
        );
        let sorted = batch_plan(&lengths, 8, None::<&mut StdRng>);
        assert!(
            sorted
                .windows(2)
                .all(|w| lengths[w[0][0]] <= lengths[w[1][0]])
        );
    }

    #[test]
    fn collate_pads_to_the_longest_in_the_batch() {
        let examples = vec![example(3, 1), example(5, 0), example(2, 1)];
        let batch = collate(&examples, &[0, 2], &Device::Cpu).unwrap();
        assert_eq!(batch.input.input_ids.dims(), &[2, 3]);
        assert_eq!(
            batch.input.attention_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 1, 0]]
        );
        assert_eq!(
            batch.input.input_ids.to_vec2::<u32>().unwrap()[1],
            vec![1, 2, 0]
        );
        assert_eq!(batch.labels.to_vec1::<u32>().unwrap(), vec![1, 1]);
        assert!(batch.label_mask.is_none());
    }

    #[test]
    fn unlabeled_examples_are_masked_out_of_the_labels() {
        let mut examples = vec![example(3, 1), example(5, 0), example(2, 1)];
        examples[1].label = Label::Unlabeled;
        let batch = collate(&examples, &[1, 0, 2], &Device::Cpu).unwrap();
        assert_eq!(batch.labels.to_vec1::<u32>().unwrap(), vec![0, 1, 1]);
        let mask = batch.label_mask.unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(mask, vec![0, 1, 1]);
        examples[0].label = Label::Score(2.5);
        let batch = collate(&examples, &[1, 0], &Device::Cpu).unwrap();
        assert_eq!(batch.labels.to_vec1::<f32>().unwrap(), vec![0.0, 2.5]);
    }
}
