//! Where a model's files are: a local directory, or a hub repository fetched (or found in the
//! cache) by `hf-hub`.

use anyhow::{Context, Result, bail};
use kd_data::TOKENIZER_FILES;
use std::path::{Path, PathBuf};

/// The files of a BERT checkpoint. Tokenizer files sit beside the config.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
}

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";

impl ModelFiles {
    /// Resolves `model`: an existing directory is used as it is; anything else is taken as a
    /// hub id such as `sentence-transformers/all-MiniLM-L6-v2`.
    pub fn resolve(model: &str) -> Result<Self> {
        if model.trim().is_empty() || model.trim() != model {
            bail!("model {model:?} is empty or has spaces around it: name a directory or hub id");
        }
        let path = Path::new(model);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if looks_like_path(model) {
            bail!("model directory {model} does not exist");
        }
        // `runs/teacher` reads as a hub id too: where its first part is a directory here, a
        // mistyped path is the likelier mistake, and the message says so first.
        let local_parent = path
            .parent()
            .is_some_and(|p| p.is_dir() && p != Path::new(""));
        Self::from_hub(model).map_err(|error| match local_parent {
            true => error.context(format!(
                "model directory {model} does not exist (nor does a hub model of that id)"
            )),
            false => error,
        })
    }

    pub fn from_dir(dir: &Path) -> Result<Self> {
        let files = Self {
            dir: dir.to_path_buf(),
            config: dir.join(CONFIG),
            weights: dir.join(WEIGHTS),
        };
        if !files.weights.is_file() && dir.join("model.onnx").is_file() {
            bail!(
                "{} is an ONNX export (model.onnx): run it with ONNX Runtime or tract, or measure \
                 it with `kd compare --onnx-python PYTHON`; kd itself loads model.safetensors",
                dir.display()
            );
        }
        for file in [&files.config, &files.weights] {
            if !file.is_file() {
                bail!(
                    "model directory {} has no {}",
                    dir.display(),
                    file.display()
                );
            }
        }
        Ok(files)
    }

    fn from_hub(model_id: &str) -> Result<Self> {
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .context("cannot set up the Hugging Face hub client")?;
        let repo = api.model(model_id.to_string());
        let fetch = |file: &str| {
            repo.get(file).with_context(|| {
                format!(
                    "cannot get {file} of model {model_id} from the cache ({}) or the hub",
                    hub_cache_dir().display()
                )
            })
        };
        let config = fetch(CONFIG)?;
        let weights = fetch(WEIGHTS)?;
        let mut tokenizers = 0;
        for file in TOKENIZER_FILES {
            if repo.get(file).is_ok() {
                tokenizers += 1;
            }
        }
        if tokenizers == 0 {
            bail!("model {model_id} has no tokenizer files on the hub or in the cache");
        }
        let dir = config
            .parent()
            .context("hub file without a parent directory")?
            .to_path_buf();
        Ok(Self {
            dir,
            config,
            weights,
        })
    }
}

/// The tokenizer files present in a model directory, to copy beside an exported model.
pub(crate) fn tokenizer_files(dir: &Path) -> Vec<PathBuf> {
    TOKENIZER_FILES
        .iter()
        .map(|file| dir.join(file))
        .filter(|path| path.is_file())
        .collect()
}

fn looks_like_path(model: &str) -> bool {
    model.starts_with(['.', '/', '~'])
        || model.ends_with('/')
        || model.matches('/').count() > 1
        || model.contains('\\')
}

/// The hub cache `hf-hub` reads, for error messages.
fn hub_cache_dir() -> PathBuf {
    hf_hub::Cache::from_env().path().clone()
}
