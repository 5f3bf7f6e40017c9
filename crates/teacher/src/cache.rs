//! Teacher outputs computed once and reused: logits for a dataset are stored under a key
//! derived from the teacher's weights and the dataset's token ids, so a changed teacher,
//! tokenizer, maximum length or dataset never reads a stale cache.

use crate::task_model::TaskModel;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use kd_data::EncodedExample;
use kd_train::Progress;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

/// A directory of cached teacher logits.
pub struct TeacherCache {
    dir: PathBuf,
}

/// Where cached logits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Computed,
    Loaded,
}

impl TeacherCache {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
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
        let key = cache_key(teacher_weights, examples)?;
        let path = self
            .dir
            .join(format!("teacher-logits-{key:016x}.safetensors"));
        if path.is_file() {
            let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)
                .with_context(|| format!("cannot read teacher cache {}", path.display()))?;
            if let Some(logits) = tensors.remove("logits")
                && logits.dim(0)? == examples.len()
            {
                return Ok((logits, CacheOutcome::Loaded));
            }
        }
        let progress = Progress::new(
            examples.len().div_ceil(batch_size.max(1)) as u64,
            "teacher logits",
        );
        let logits = teacher.logits(examples, batch_size, Some(&progress))?;
        progress.finish();
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create cache directory {}", self.dir.display()))?;
        let tensors = HashMap::from([("logits".to_string(), logits.clone())]);
        kd_bert::write_atomically(&path, |tmp| {
            Ok(candle_core::safetensors::save(&tensors, tmp)?)
        })?;
        Ok((logits, CacheOutcome::Computed))
    }
}

/// A hash of the teacher's weight bytes and every example's token and segment ids.
fn cache_key(teacher_weights: &Path, examples: &[EncodedExample]) -> Result<u64> {
    let mut hasher = DefaultHasher::new();
    kd_data::hash_file(teacher_weights, &mut hasher)?;
    for example in examples {
        example.ids.hash(&mut hasher);
        example.type_ids.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_bert::{BertConfig, ProblemType};
    use kd_data::Label;

    fn tiny_teacher(dir: &Path, seed: u64) -> TaskModel {
        std::fs::write(
            dir.join("vocab.txt"),
            "[PAD]\n[UNK]\n[CLS]\n[SEP]\ngood\nbad\n",
        )
        .unwrap();
        let mut config: BertConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 6, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 8,
        }))
        .unwrap();
        config.set_classification_head(
            &["a".into(), "b".into()],
            ProblemType::SingleLabelClassification,
        );
        TaskModel::initialised(config, dir, seed, 8).unwrap()
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
        let cache = TeacherCache::new(&dir.path().join("cache"));
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

        let other_data = vec![example(&[2, 4, 3])];
        assert_eq!(
            cache.logits(&teacher, &weights, &other_data, 4).unwrap().1,
            CacheOutcome::Computed
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
}
