//! Teacher outputs computed once and reused: logits, and the hidden states of the layers an
//! objective compares, for a dataset are stored under a key derived from the teacher's weights
//! and the dataset's token ids, so a changed teacher, tokenizer, maximum length or dataset
//! never reads a stale cache.
//!
//! In a data-parallel job the ranks compute the teacher's outputs together, each every
//! `size`-th batch of the one plan a single process follows, and put them together by a sum
//! of disjoint bit patterns, so that every rank holds the whole cache, equal bit for bit to a
//! single process's; rank 0 writes it, and every rank waits for the file to be whole before
//! going on, so that no rank reads a cache file half-written or not yet there while another
//! has it (which would send the ranks down different paths). Ranks that do not share the
//! leader's filesystem never find a file and always compute.

use crate::task_model::TaskModel;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use kd_bert::{AttentionMaps, Mode};
use kd_data::{EncodedExample, batch_plan, collate};
use kd_train::{Interrupted, Progress, stop_requested};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// A directory of cached teacher logits, and the flag that stops computing them.
pub struct TeacherCache<'a> {
    dir: PathBuf,
    stop: &'a AtomicBool,
}

/// Where cached logits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Computed,
    Loaded,
}

impl<'a> TeacherCache<'a> {
    /// The cache in `dir`; raising `stop` ends a computation of the teacher's outputs with
    /// [`Interrupted`], nothing written.
    pub fn new(dir: &Path, stop: &'a AtomicBool) -> Self {
        Self {
            dir: dir.to_path_buf(),
            stop,
        }
    }

    /// The teacher's logits for `examples` (`[n, outputs]`, in example order), from the cache
    /// when the same teacher weights and token ids were seen before.
    pub fn logits(
        &self,
        teacher: &TaskModel,
        teacher_weights: &Path,
        examples: &[EncodedExample],
        batch_size: usize,
    ) -> Result<(Tensor, CacheOutcome)> {
        let path = self.logits_path(cache_key(teacher, teacher_weights, examples)?);
        let cached = self
            .read(&path)?
            .and_then(|mut tensors| tensors.remove("logits"))
            .filter(|logits| logits.dim(0).ok() == Some(examples.len()));
        // One collective on every rank, whether or not this one found the file.
        if every_rank(cached.is_some())
            && let Some(logits) = cached
        {
            return Ok((logits, CacheOutcome::Loaded));
        }
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
        let (count, batches) = this_ranks_batches(&lengths, batch_size, self.stop);
        let progress = Progress::new(count as u64, "teacher logits");
        let rows = teacher.logits_of_batches(examples, batches, None, Some(&progress))?;
        progress.finish();
        let logits = combine_rows(rows, teacher.labels.len())?;
        self.write(
            &path,
            HashMap::from([("logits".to_string(), logits.clone())]),
        )?;
        Ok((logits, CacheOutcome::Computed))
    }

    /// Where the logits for the teacher and dataset of `key` ([`cache_key`]) are kept.
    fn logits_path(&self, key: u64) -> PathBuf {
        self.dir
            .join(format!("teacher-logits-{key:016x}.safetensors"))
    }

    /// A cache file's tensors, or `None` when there is none (or one an earlier kd wrote
    /// without a checksum, computed again). A damaged file is an error.
    fn read(&self, path: &Path) -> Result<Option<HashMap<String, Tensor>>> {
        if !path.is_file() {
            return Ok(None);
        }
        let file = kd_bert::read_checked(
            path,
            "delete it and run again (the teacher's outputs are computed again)",
        )?;
        Ok(file.verified.then_some(file.tensors))
    }

    fn write(&self, path: &Path, tensors: HashMap<String, Tensor>) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create cache directory {}", self.dir.display()))?;
        let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
        // Rank 0 writes; the others wait until the file is whole.
        let written = kd_bert::write_checked(path, &tensors, HashMap::new());
        kd_parallel::world().barrier();
        written
    }
}

/// A teacher's hidden states at some layers for every example of a dataset, padding removed:
/// per layer `[tokens, hidden]` in f16, examples one after another.
pub struct CachedStates {
    /// The layers (0 = embedding output), in the order of `states`.
    pub layers: Vec<usize>,
    states: Vec<Tensor>,
    /// Example `i`'s rows are `offsets[i]..offsets[i + 1]`.
    offsets: Vec<usize>,
}

impl CachedStates {
    /// The states of the examples at `indices` as a padded batch on `device`: per layer
    /// `[indices.len(), seq_len, hidden]` in f32, zero past each example's end. They move
    /// in f16, half the bytes.
    pub fn batch(&self, indices: &[usize], seq_len: usize, device: &Device) -> Result<Vec<Tensor>> {
        self.states
            .iter()
            .map(|states| {
                let rows = indices
                    .iter()
                    .map(|&i| {
                        let (start, end) = (self.offsets[i], self.offsets[i + 1]);
                        let rows = states.narrow(0, start, end - start)?;
                        rows.pad_with_zeros(0, 0, seq_len - (end - start))
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let batch = Tensor::stack(&rows, 0)?.to_device(device)?;
                Ok(batch.to_dtype(DType::F32)?)
            })
            .collect()
    }
}

impl TeacherCache<'_> {
    /// The teacher's hidden states at `layers` (0 = embedding output) for `examples`, from the
    /// cache when the same teacher weights, token ids and layers were seen before. The pass
    /// that computes them caches the logits too (read them with [`TeacherCache::logits`]).
    pub fn states(
        &self,
        teacher: &TaskModel,
        teacher_weights: &Path,
        examples: &[EncodedExample],
        layers: &[usize],
        batch_size: usize,
    ) -> Result<(CachedStates, CacheOutcome)> {
        let key = cache_key(teacher, teacher_weights, examples)?;
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        layers.hash(&mut hasher);
        let path = self.dir.join(format!(
            "teacher-states-{:016x}.safetensors",
            hasher.finish()
        ));
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
        let mut offsets = vec![0];
        for length in &lengths {
            offsets.push(offsets.last().unwrap() + length);
        }
        let total = *offsets.last().unwrap();
        let names: Vec<String> = layers.iter().map(|l| format!("layer.{l}")).collect();
        let cached = |states: Vec<Tensor>| CachedStates {
            layers: layers.to_vec(),
            states,
            offsets: offsets.clone(),
        };
        let read = self.read(&path)?.and_then(|mut tensors| {
            let states: Option<Vec<Tensor>> =
                names.iter().map(|name| tensors.remove(name)).collect();
            states.filter(|s| s.iter().all(|t| t.dim(0).ok() == Some(total)))
        });
        if every_rank(read.is_some())
            && let Some(states) = read
        {
            return Ok((cached(states), CacheOutcome::Loaded));
        }
        let hidden = teacher.config.hidden_size;
        let mut buffers = vec![vec![f16::ZERO; total * hidden]; layers.len()];
        let mut logits: Vec<Option<Tensor>> = vec![None; examples.len()];
        let (count, plan) = this_ranks_batches(&lengths, batch_size, self.stop);
        let progress = Progress::new(count as u64, "teacher states");
        for indices in plan {
            let indices = indices?;
            let batch = collate(examples, &indices, teacher.params.device())?;
            let (batch_logits, output) =
                teacher
                    .model
                    .forward_with(&batch.input, Mode::Inference, AttentionMaps::Skip)?;
            for (buffer, &layer) in buffers.iter_mut().zip(layers) {
                let states = output.layer(layer);
                let width = states.dim(1)? * hidden;
                let values = states.flatten_all()?.to_vec1::<f32>()?;
                // Each example's real positions, into its place in example order.
                for (row, &index) in indices.iter().enumerate() {
                    let source = &values[row * width..][..lengths[index] * hidden];
                    let target = &mut buffer[offsets[index] * hidden..offsets[index + 1] * hidden];
                    for (target, &value) in target.iter_mut().zip(source) {
                        *target = f16::from_f32(value);
                    }
                }
            }
            for (row, &index) in indices.iter().enumerate() {
                logits[index] = Some(batch_logits.get(row)?);
            }
            progress.step(String::new());
        }
        progress.finish();
        let world = kd_parallel::world();
        let states = buffers
            .into_iter()
            .map(|mut buffer| {
                world.sum(buffer.reinterpret_cast_mut());
                Ok(Tensor::from_vec(buffer, (total, hidden), &Device::Cpu)?)
            })
            .collect::<Result<Vec<_>>>()?;
        self.write(&path, names.into_iter().zip(states.clone()).collect())?;
        // The cache stays in host memory; a batch's rows move to the run's device.
        let logits = combine_rows(logits, teacher.labels.len())?;
        let logits_path = self.logits_path(key);
        // The leader's view, on every rank: writing is a collective.
        let absent = kd_parallel::world().broadcast(vec![u8::from(!logits_path.is_file())]);
        if absent == [1] {
            self.write(
                &logits_path,
                HashMap::from([("logits".to_string(), logits)]),
            )?;
        }
        Ok((cached(states), CacheOutcome::Computed))
    }
}

/// Whether `here` holds on every rank of the job (so that all ranks load a cache, or all
/// compute it together).
fn every_rank(here: bool) -> bool {
    let world = kd_parallel::world();
    world.sum_one(f64::from(u8::from(here))) == world.size() as f64
}

/// The batches of a single process's plan over examples of `lengths` that this rank computes
/// (every `size`-th, from its rank), and how many. They come in rounds of one batch a rank,
/// and before each round the ranks agree whether `stop` is raised: then every rank ends at
/// that round with [`Interrupted`], and none is left waiting for the others in a collective.
fn this_ranks_batches(
    lengths: &[usize],
    batch_size: usize,
    stop: &AtomicBool,
) -> (usize, impl Iterator<Item = Result<Vec<usize>>> + Send) {
    let world = kd_parallel::world();
    let (rank, size) = (world.rank(), world.size());
    let plan = batch_plan(lengths, batch_size, None::<&mut rand::rngs::StdRng>);
    let count = plan.len().saturating_sub(rank).div_ceil(size);
    let rounds: Vec<Vec<Vec<usize>>> = plan.chunks(size).map(<[_]>::to_vec).collect();
    let batches = rounds.into_iter().filter_map(move |mut round| {
        if stop_requested(stop) {
            return Some(Err(Interrupted.into()));
        }
        (rank < round.len()).then(|| Ok(round.swap_remove(rank)))
    });
    (count, batches)
}

/// One `[examples, outputs]` f32 tensor on the CPU from the rows each rank computed (`None`
/// for the others'): each rank holds its rows' bits and zeros elsewhere, so the sum of the
/// bits over the ranks is an exact copy.
fn combine_rows(rows: Vec<Option<Tensor>>, outputs: usize) -> Result<Tensor> {
    let mut bits = vec![0u32; rows.len() * outputs];
    for (index, row) in rows.iter().enumerate() {
        if let Some(row) = row {
            let values = row.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            for (bits, value) in bits[index * outputs..].iter_mut().zip(values) {
                *bits = value.to_bits();
            }
        }
    }
    kd_parallel::world().sum(&mut bits);
    let values: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
    Ok(Tensor::from_vec(
        values,
        (rows.len(), outputs),
        &Device::Cpu,
    )?)
}

/// A hash of the teacher's weight bytes, its precision and every example's token and segment
/// ids.
fn cache_key(
    teacher: &TaskModel,
    teacher_weights: &Path,
    examples: &[EncodedExample],
) -> Result<u64> {
    let mut hasher = DefaultHasher::new();
    kd_data::hash_file(teacher_weights, &mut hasher)?;
    // An f32 run reads only what f32 computed; f32's keys are those from before precisions.
    let precision = teacher.precision();
    if !precision.is_f32() {
        precision.to_string().hash(&mut hasher);
    }
    for example in examples {
        example.ids.hash(&mut hasher);
        example.type_ids.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_data::Label;

    fn tiny_teacher(dir: &Path, seed: u64) -> TaskModel {
        crate::task_model::tiny_task_model(dir, &["a", "b"], seed)
    }

    fn example(ids: &[u32]) -> EncodedExample {
        EncodedExample {
            ids: ids.to_vec(),
            type_ids: vec![0; ids.len()],
            label: Label::Class(0),
        }
    }

    #[test]
    fn logits_are_computed_once_and_invalidated_by_a_new_teacher_or_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TeacherCache::new(&dir.path().join("cache"), &NO_STOP);
        let teacher = tiny_teacher(dir.path(), 1);
        let weights = dir.path().join("model.safetensors");
        teacher.params.save(&weights).unwrap();
        let examples = vec![example(&[2, 4, 3]), example(&[2, 5, 4, 3])];

        let (first, outcome) = cache.logits(&teacher, &weights, &examples, 4).unwrap();
        assert_eq!(outcome, CacheOutcome::Computed);
        assert_eq!(first.dims(), &[2, 2]);
        let (again, outcome) = cache.logits(&teacher, &weights, &examples, 4).unwrap();
        assert_eq!(outcome, CacheOutcome::Loaded);
        assert_eq!(
            again.to_vec2::<f32>().unwrap(),
            first.to_vec2::<f32>().unwrap()
        );

        // A damaged entry is refused with its name and the remedy, never used.
        let entry = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let intact = std::fs::read(&entry).unwrap();
        std::fs::write(&entry, &intact[..intact.len() - 2]).unwrap();
        let error = cache
            .logits(&teacher, &weights, &examples, 4)
            .err()
            .unwrap();
        let error = format!("{error:#}");
        assert!(
            error.contains("is corrupt") && error.contains("delete it"),
            "{error}"
        );
        std::fs::write(&entry, intact).unwrap();

        let other_data = vec![example(&[2, 4, 3])];
        assert_eq!(
            cache.logits(&teacher, &weights, &other_data, 4).unwrap().1,
            CacheOutcome::Computed
        );

        // The same teacher computing in bf16 has entries of its own.
        let mut teacher = teacher;
        teacher.set_precision(kd_bert::Precision::Bf16);
        let (in_bf16, outcome) = cache.logits(&teacher, &weights, &examples, 4).unwrap();
        assert_eq!(outcome, CacheOutcome::Computed);
        assert_ne!(
            in_bf16.to_vec2::<f32>().unwrap(),
            first.to_vec2::<f32>().unwrap()
        );

        let retrained = tiny_teacher(dir.path(), 2);
        retrained.params.save(&weights).unwrap();
        let (changed, outcome) = cache.logits(&retrained, &weights, &examples, 4).unwrap();
        assert_eq!(outcome, CacheOutcome::Computed);
        assert_ne!(
            changed.to_vec2::<f32>().unwrap(),
            first.to_vec2::<f32>().unwrap()
        );
    }

    static NO_STOP: AtomicBool = AtomicBool::new(false);

    #[test]
    fn a_stop_request_ends_computing_with_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(true);
        let cache = TeacherCache::new(&dir.path().join("cache"), &stop);
        let teacher = tiny_teacher(dir.path(), 1);
        let weights = dir.path().join("model.safetensors");
        teacher.params.save(&weights).unwrap();
        let examples = vec![example(&[2, 4, 3]), example(&[2, 5, 4, 3])];
        let error = cache.logits(&teacher, &weights, &examples, 1).unwrap_err();
        assert!(Interrupted::caused(&error), "{error:#}");
        let error = cache
            .states(&teacher, &weights, &examples, &[1], 1)
            .err()
            .unwrap();
        assert!(Interrupted::caused(&error), "{error:#}");
        assert!(!dir.path().join("cache").exists());
        // Lowered, the same call computes.
        stop.store(false, std::sync::atomic::Ordering::SeqCst);
        let (_, outcome) = cache.logits(&teacher, &weights, &examples, 1).unwrap();
        assert_eq!(outcome, CacheOutcome::Computed);
    }

    #[test]
    fn cached_states_are_the_live_ones_in_f16_padded_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TeacherCache::new(&dir.path().join("cache"), &NO_STOP);
        let teacher = tiny_teacher(dir.path(), 1);
        teacher.params.init_bert(0.5, 3).unwrap();
        let weights = dir.path().join("model.safetensors");
        teacher.params.save(&weights).unwrap();
        let examples = vec![
            example(&[2, 4, 3]),
            example(&[2, 5, 4, 4, 3]),
            example(&[2, 3]),
        ];
        let layers = [0, 1];
        let (cached, outcome) = cache
            .states(&teacher, &weights, &examples, &layers, 2)
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Computed);
        let (again, outcome) = cache
            .states(&teacher, &weights, &examples, &layers, 2)
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Loaded);
        // The same pass cached the logits, exactly as computing them alone gives them.
        let (logits, outcome) = cache.logits(&teacher, &weights, &examples, 2).unwrap();
        assert_eq!(outcome, CacheOutcome::Loaded);
        let alone = teacher.logits(&examples, 2, None).unwrap();
        assert_eq!(
            logits.to_vec2::<f32>().unwrap(),
            alone.to_vec2::<f32>().unwrap()
        );

        // Examples 2 and 0 as one batch, padded to 3 tokens, against the live teacher.
        let batch = collate(&examples, &[2, 0], &Device::Cpu).unwrap();
        let (_, live) = teacher
            .model
            .forward(&batch.input, Mode::Inference)
            .unwrap();
        for states in [&cached, &again] {
            let rows = states.batch(&[2, 0], 3, &Device::Cpu).unwrap();
            for (row, expected) in rows.iter().zip([&live.embeddings, &live.hidden_states[0]]) {
                assert_eq!(row.dims(), &[2, 3, 8]);
                let row = row.to_vec3::<f32>().unwrap();
                let expected = expected.to_vec3::<f32>().unwrap();
                for (example, length) in [(0, 2), (1, 3)] {
                    for position in 0..3 {
                        for (a, b) in row[example][position]
                            .iter()
                            .zip(&expected[example][position])
                        {
                            if position < length {
                                assert!((a - b).abs() <= 2e-3 * b.abs().max(1.0), "{a} vs {b}");
                            } else {
                                assert_eq!(*a, 0.0);
                            }
                        }
                    }
                }
            }
        }
    }
}
