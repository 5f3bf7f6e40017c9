//! The trainable parameters of a model: created by the model's constructor, initialised as
//! BERT does from a seeded generator, loaded from and saved to HF safetensors files.

use crate::family::Family;
use anyhow::{Context, Result, bail};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Named variables, with HF's BERT parameter names (`bert.encoder.layer.0...`,
/// `classifier.weight`) whatever the family; files are read and written in the family's names.
#[derive(Clone)]
pub struct Params {
    varmap: VarMap,
    device: Device,
    family: Family,
}

/// What [`Params::load`] did not take from the file.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Parameters the file lacked and that kept their initial values (e.g. a new task head).
    pub initialised: Vec<String>,
    /// Tensors in the file that no parameter uses (e.g. an MLM head).
    pub unused: Vec<String>,
}

impl Params {
    pub fn new(device: &Device) -> Self {
        Self {
            varmap: VarMap::new(),
            device: device.clone(),
            family: Family::Bert,
        }
    }

    /// These parameters, read from and written to files in `family`'s names.
    pub fn in_family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    /// Where the parameters live, and so where the model computes.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The builder a model constructor takes; every tensor it asks for becomes a parameter.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device)
    }

    /// Every parameter, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut vars: Vec<_> = self
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.varmap.data().lock().unwrap().get(name).cloned()
    }

    pub fn num_parameters(&self) -> usize {
        self.vars().iter().map(|(_, var)| var.elem_count()).sum()
    }

    /// Parameters holding `other`'s variables whose names start with `prefix`: the same
    /// variables, not copies, so that a model built on these (a task head on a shared
    /// encoder) trains them for both.
    pub fn sharing(other: &Params, prefix: &str) -> Self {
        let shared = Self::new(&other.device).in_family(other.family);
        for (name, var) in other.vars() {
            if name.starts_with(prefix) {
                shared.insert(name, var);
            }
        }
        shared
    }

    /// Adds `var` under `name` (a model built afterwards uses it for that name).
    pub fn insert(&self, name: String, var: Var) {
        self.varmap.data().lock().unwrap().insert(name, var);
    }

    /// BERT's initialisation: layer-norm weights 1, biases 0, every other weight drawn from
    /// N(0, std), in name order from a generator seeded with `seed`.
    pub fn init_bert(&self, std: f64, seed: u64) -> Result<()> {
        self.init_bert_where(std, seed, |_| true)
    }

    /// [`Params::init_bert`] for the parameters whose names `select` accepts only.
    pub fn init_bert_where(
        &self,
        std: f64,
        seed: u64,
        select: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let mut rng = StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, std as f32)?;
        for (name, var) in self.vars().into_iter().filter(|(name, _)| select(name)) {
            let value = if name.ends_with(".bias") {
                var.zeros_like()?
            } else if name.contains("LayerNorm") {
                var.ones_like()?
            } else {
                let values: Vec<f32> = (0..var.elem_count())
                    .map(|_| normal.sample(&mut rng))
                    .collect();
                Tensor::from_vec(values, var.shape(), &self.device)?
            };
            var.set(&value)?;
        }
        Ok(())
    }

    /// Loads every parameter from a safetensors file. A checkpoint's names may carry the
    /// `bert.` prefix or not, and old checkpoints' `gamma`/`beta` stand for layer-norm
    /// `weight`/`bias`. A parameter the file lacks is an error naming it, unless
    /// `may_be_missing` accepts its name.
    pub fn load(&self, path: &Path, may_be_missing: impl Fn(&str) -> bool) -> Result<LoadReport> {
        self.load_except(path, may_be_missing, |_| false)
    }

    /// [`Params::load`], leaving the parameters `kept` accepts as they are (initialised) even
    /// where the file has them: a task head that answers another task.
    pub fn load_except(
        &self,
        path: &Path,
        may_be_missing: impl Fn(&str) -> bool,
        kept: impl Fn(&str) -> bool,
    ) -> Result<LoadReport> {
        let file = unsafe { MmapedSafetensors::new(path) }
            .with_context(|| format!("cannot read weights file {}", path.display()))?;
        let available: HashMap<String, _> = file.tensors().into_iter().collect();
        let mut used = BTreeSet::new();
        let mut report = LoadReport::default();
        for (name, var) in self.vars() {
            if kept(&name) {
                report.initialised.push(name);
                continue;
            }
            let Some(key) =
                checkpoint_names(self.family, &name).find(|key| available.contains_key(key))
            else {
                if may_be_missing(&name) {
                    report.initialised.push(name);
                    continue;
                }
                bail!(
                    "weights file {} lacks tensor {name} (shape {:?}) that the config needs",
                    path.display(),
                    var.dims()
                );
            };
            let tensor = load_f32(&file, &key, &self.device, &mut used)
                .with_context(|| format!("cannot load tensor {key} from {}", path.display()))?;
            if tensor.dims() != var.dims() {
                bail!(
                    "tensor {key} in {} has shape {:?}, the config needs {:?}",
                    path.display(),
                    tensor.dims(),
                    var.dims()
                );
            }
            var.set(&tensor)?;
            used.insert(key);
        }
        report.unused = available
            .into_keys()
            .filter(|key| !used.contains(key))
            .collect();
        report.unused.sort();
        // Layers past the config's: a config and weights of two different models (an export
        // over another's directory), which would run silently on the first layers alone.
        let deepest = |names: &mut dyn Iterator<Item = &str>| names.filter_map(layer_index).max();
        let configured = deepest(&mut self.vars().iter().map(|(name, _)| name.as_str()));
        let stored = deepest(&mut report.unused.iter().map(String::as_str));
        if let (Some(configured), Some(stored)) = (configured, stored)
            && stored > configured
        {
            bail!(
                "weights file {} holds layer {stored}, but its config describes {} layers: the \
                 config and the weights are of different models",
                path.display(),
                configured + 1
            );
        }
        Ok(report)
    }

    /// Writes every parameter to a safetensors file (with the `format: pt` metadata HF
    /// transformers checks) in the family's names, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let vars: Vec<(String, Var)> = self
            .vars()
            .into_iter()
            .map(|(name, var)| (self.family.checkpoint_name(&name), var))
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_atomically(path, |tmp| {
            let tensors = vars
                .iter()
                .map(|(name, var)| (name.as_str(), var.as_tensor()));
            safetensors::tensor::serialize_to_file(tensors, Some(metadata), tmp)?;
            Ok(())
        })
    }
}

/// The encoder layer a parameter belongs to (`encoder.layer.3.output.dense.weight`: 3).
fn layer_index(name: &str) -> Option<usize> {
    let (_, rest) = name.split_once(".layer.")?;
    rest.split('.').next()?.parse().ok()
}

/// A tensor of the file in f32: floats converted, int8 weights (kd's exports) dequantized by
/// the per-row scales stored beside them as `<name>_scale`.
fn load_f32(
    file: &MmapedSafetensors,
    key: &str,
    device: &Device,
    used: &mut BTreeSet<String>,
) -> Result<Tensor> {
    let view = file.get(key)?;
    if view.dtype() != safetensors::Dtype::I8 {
        return Ok(file.load(key, device)?.to_dtype(DType::F32)?);
    }
    let scale_key = format!("{key}_scale");
    let scales = file
        .load(&scale_key, device)
        .with_context(|| format!("int8 tensor {key} has no {scale_key}"))?
        .to_dtype(DType::F32)?;
    used.insert(scale_key);
    let levels: Vec<f32> = view.data().iter().map(|&b| b as i8 as f32).collect();
    let levels = Tensor::from_vec(levels, view.shape(), device)?;
    Ok(levels.broadcast_mul(&scales.unsqueeze(1)?)?)
}

/// The names a parameter may have in a checkpoint of `family`, preferred first (see
/// [`Family::checkpoint_names`]), and the legacy names of layer norms.
fn checkpoint_names(family: Family, name: &str) -> impl Iterator<Item = String> {
    let plain = family.checkpoint_names(name);
    let legacy = plain
        .iter()
        .filter_map(|n| {
            if let Some(stem) = n.strip_suffix("LayerNorm.weight") {
                Some(format!("{stem}LayerNorm.gamma"))
            } else {
                n.strip_suffix("LayerNorm.bias")
                    .map(|stem| format!("{stem}LayerNorm.beta"))
            }
        })
        .collect::<Vec<_>>();
    plain.into_iter().chain(legacy)
}

/// Writes `value` as pretty-printed JSON to `path`, atomically.
pub fn write_json_atomically(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    write_atomically(path, |tmp| Ok(std::fs::write(tmp, text)?))
}

/// Writes `path` through `write` on a temporary file beside it, then renames it into place, so
/// that an interrupted write never leaves a truncated file under the final name. The file is
/// made readable by everyone and writable by its owner (0644), as model files are shared,
/// whatever mode the writer created it with (safetensors: 0600; a copy: the source's).
///
/// Under data parallelism only rank 0 writes: on the other ranks this does nothing, so that a
/// job's ranks never race on one file.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if !kd_parallel::world().is_leader() {
        return Ok(());
    }
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    write(&tmp).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set the permissions of {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BertConfig, BertModel};

    fn encoder(layers: usize) -> Params {
        let config: BertConfig = serde_json::from_value(serde_json::json!({
            "model_type": "bert", "vocab_size": 12, "hidden_size": 4, "num_hidden_layers": layers,
            "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 8,
            "type_vocab_size": 2, "hidden_act": "gelu",
        }))
        .unwrap();
        let params = Params::new(&Device::Cpu);
        BertModel::new(&config, params.var_builder(), true).unwrap();
        params.init_bert(0.02, 1).unwrap();
        params
    }

    /// A config over another model's weights (fewer layers than they hold) is an error, not a
    /// model that runs on the first layers alone.
    #[test]
    fn weights_deeper_than_the_config_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        encoder(3).save(&path).unwrap();
        encoder(3).load(&path, |_| false).unwrap();
        let error = encoder(2).load(&path, |_| false).unwrap_err().to_string();
        assert!(
            error.contains("holds layer 2, but its config describes 2 layers"),
            "{error}"
        );
    }
}
