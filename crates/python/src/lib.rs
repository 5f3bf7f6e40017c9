//! The `kd` Python package's native module, `kd._native`: its one job is to translate kd's
//! commands between Python and the kd crates (arguments in, a dict out, errors as exceptions);
//! what a command does lives in those crates, shared with the `kd` command line
//! ([`kd_runner::run_recipe`] for `kd.distill`). maturin builds it into a wheel
//! (`crates/python/pyproject.toml`); the package's Python side and type stubs are in
//! `crates/python/python/kd/`, its tests in `tests/python/`.
//!
//! Every command follows [`distill`]'s and [`export`]'s pattern: the arguments typed in the
//! `#[pyfunction]` signature, each taken by its extractor in [`arguments`] (which names it in
//! a TypeError or ValueError, and refuses an empty path), checked and converted while the GIL
//! is held, the work in a closure given to [`bridge::run_detached`] with the [`Call`] that
//! says how it stops (GIL released, Ctrl-C stopping it, kd's errors as `kd.KdError`), its
//! result handed back by [`bridge::to_python`]. Add the function to [`kd_native`], its stub to
//! `kd/_native.pyi` and its name to `kd/__init__.py`.

mod arguments;
mod bridge;

use arguments::refuse_empty_path;
use bridge::{
    Call, Interrupted, KdError, Stops, kd_error, run_detached, to_python, to_toml, type_name,
};
use kd_bert::DeviceName;
use kd_data::{DataSpec, Example, Label};
use kd_runner::options::DeviceArg;
use kd_runner::{Recipe, RunOptions, run};
use kd_teacher::TaskModel;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// kd (knowledge distillation for BERT-family models) from Python.
#[pymodule(name = "_native")]
fn kd_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    fix_thread_count(module.py())?;
    module.add("KdError", module.py().get_type::<KdError>())?;
    module.add_function(wrap_pyfunction!(finetune, module)?)?;
    module.add_function(wrap_pyfunction!(evaluate, module)?)?;
    module.add_function(wrap_pyfunction!(predict, module)?)?;
    module.add_function(wrap_pyfunction!(distill, module)?)?;
    module.add_function(wrap_pyfunction!(compare, module)?)?;
    module.add_function(wrap_pyfunction!(export, module)?)?;
    Ok(())
}

/// What the kd command sets up for its process (experiments/src/main.rs), as it applies inside
/// someone else's Python process:
/// - `fix_thread_count`: yes. candle sizes every matrix product from `RAYON_NUM_THREADS`, or
///   else counts the physical cores anew; it is decided once, here, when the module is first
///   imported, through `os.environ` as Python code would, and only when unset (the caller's
///   value stands). One process: no MPI ranks to share the cores with.
/// - `keep_freed_memory` (glibc's `mallopt`): no. It would change how the whole host process
///   (NumPy, PyTorch, ...) allocates, for good, and must come before any thread starts, long
///   past when a module is imported. CPU training steps are slower than the command's for it
///   (a third to a half of a step, main.rs says); glibc's `MALLOC_MMAP_MAX_=0` and
///   `MALLOC_TRIM_THRESHOLD_` (mallopt(3)), set before Python starts, do the same by choice.
/// - SIGXFSZ ignored: CPython already ignores it, so a write past a file-size limit is an error.
/// - `kd_parallel::start` (MPI): no; data-parallel jobs are for the command under mpirun.
/// - the work on candle's CPU pool (`Device::with_context`): yes, in [`run_detached`].
fn fix_thread_count(py: Python<'_>) -> PyResult<()> {
    let environ = py.import("os")?.getattr("environ")?;
    if !environ.contains("RAYON_NUM_THREADS")? {
        let threads = candle_core::utils::get_num_threads().to_string();
        environ.set_item("RAYON_NUM_THREADS", threads)?;
    }
    Ok(())
}

/// Distil a student from a teacher by a recipe, as `kd distill` does; returns the run's
/// summary (what `kd distill` prints and writes to OUT/summary.json) as a dict.
///
/// `recipe` is a recipe file's path, or a dict holding a recipe's TOML structure (relative
/// paths in either are taken from the current directory). `overrides` maps recipe keys to new
/// values, applied first as `kd distill --set key=value`: a str value is read as --set reads
/// it (TOML, else a plain string), any other value as itself. Ctrl-C stops the run at its next
/// step with a checkpoint and raises KeyboardInterrupt; the same call with `resume=True`
/// continues it. kd's errors raise kd.KdError.
#[pyfunction]
#[pyo3(signature = (
    recipe, overrides = None, out = None, *, force = false, resume = false,
    cache_dir = PathBuf::from("runs/cache"), device = None, max_steps = None,
    max_train_examples = None,
), text_signature = "(recipe, overrides=None, out=None, *, force=False, resume=False, \
    cache_dir='runs/cache', device=None, max_steps=None, max_train_examples=None)")]
#[allow(clippy::too_many_arguments)]
fn distill<'py>(
    py: Python<'py>,
    recipe: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = arguments::overrides)] overrides: Option<Bound<'py, PyDict>>,
    #[pyo3(from_py_with = arguments::out)] out: Option<PathBuf>,
    #[pyo3(from_py_with = arguments::force)] force: bool,
    #[pyo3(from_py_with = arguments::resume)] resume: bool,
    #[pyo3(from_py_with = arguments::cache_dir)] cache_dir: PathBuf,
    #[pyo3(from_py_with = arguments::device)] device: Option<String>,
    #[pyo3(from_py_with = arguments::max_steps)] max_steps: Option<usize>,
    #[pyo3(from_py_with = arguments::max_train_examples)] max_train_examples: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    refuse_force_with_resume(force, resume)?;
    let recipe = RecipeSource::from_python(recipe)?;
    let overrides = match overrides {
        Some(overrides) => assignments(&overrides)?,
        None => Vec::new(),
    };
    let device = parse_device(device)?;
    let command = python_command(py, "kd.distill");
    let shared_dir = kd_runner::options::shared_dir();
    let mut call = Call {
        name: "kd.distill",
        stops: Stops::AtNextStep,
        output: None,
    };
    // Read before the work, for the call's output: where the recipe puts it unless `out` does.
    let recipe = match recipe {
        RecipeSource::File(path) => Recipe::load(&path, &overrides),
        RecipeSource::Dict(value) => Recipe::from_toml_value(value, "given as a dict", &overrides),
    }
    .map_err(|error| kd_error(&error, &call))?;
    let out = run::out_dir(&recipe, out.as_deref());
    call.output = Some(&out);
    let summary = run_detached(py, &call, |stop| {
        let options = RunOptions {
            out: Some(&out),
            force,
            resume,
            cache_dir: &cache_dir,
            shared_dir: &shared_dir,
            device,
            max_steps,
            max_train_examples,
            command,
        };
        let summary = run::run_recipe(recipe, &options, stop)?;
        if summary.interrupted() {
            return Err(interrupted(call.name, &out).into());
        }
        Ok(summary)
    })?;
    to_python(py, &summary)
}

/// Write a compact copy of a model, as `kd export` does: f16 or bf16 weights, int8 dense
/// layers (`quantize="int8"`, or `"int8-embeddings"` with the word embeddings), a vocabulary
/// pruned to the tokens some text files use, or (`format="onnx"`) a task model's ONNX graph.
/// `model` is a hub id or a model directory; `out` must be empty unless `force`. Returns the
/// export's report as a dict. kd's errors raise kd.KdError, before anything is written. An
/// export cannot stop part-way: at Ctrl-C it finishes, then raises KeyboardInterrupt.
#[pyfunction]
#[pyo3(signature = (
    model, out, *, dtype = "f32".to_string(), quantize = None,
    format = "safetensors".to_string(), prune_vocab = None, restore_heads = false, force = false,
), text_signature = "(model, out, *, dtype='f32', quantize=None, format='safetensors', \
    prune_vocab=None, restore_heads=False, force=False)")]
#[allow(clippy::too_many_arguments)]
fn export<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = arguments::model)] model: PathBuf,
    #[pyo3(from_py_with = arguments::out)] out: PathBuf,
    #[pyo3(from_py_with = arguments::dtype)] dtype: String,
    #[pyo3(from_py_with = arguments::quantize)] quantize: Option<String>,
    #[pyo3(from_py_with = arguments::format)] format: String,
    #[pyo3(from_py_with = arguments::prune_vocab)] prune_vocab: Option<Vec<PathBuf>>,
    #[pyo3(from_py_with = arguments::restore_heads)] restore_heads: bool,
    #[pyo3(from_py_with = arguments::force)] force: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let model = utf8(model, "model")?;
    let options = kd_export::ExportOptions {
        format: choice("format", &format)?,
        precision: choice("dtype", &dtype)?,
        quantize: quantize.map(|name| choice("quantize", &name)).transpose()?,
        prune_vocab: prune_vocab.unwrap_or_default(),
        restore_heads,
    };
    let call = Call {
        name: "kd.export",
        stops: Stops::WhenDone,
        output: Some(&out),
    };
    let report = run_detached(py, &call, |_stop| {
        kd_runner::export::run(&model, &out, force, &options)
    })?;
    to_python(py, &report)
}

/// Fine-tune a checkpoint on a task's labels, as `kd finetune` does, saving the best epoch as
/// an HF model directory in `out`; returns the run's report as a dict.
///
/// `task` names a GLUE task (or your own task's name); `data` holds the rest of kd's data
/// description (`kd finetune`'s Data options as keys: `data_dir`, `train`, `dev`,
/// `text_column`, `label_column`, `max_train_examples`, ...). Ctrl-C stops the run at its next
/// step with a checkpoint and raises KeyboardInterrupt; the same call with `resume=True`
/// continues it. kd's errors raise kd.KdError.
#[pyfunction]
#[pyo3(signature = (
    model, out, *, task = None, data = None, epochs = 3, lr = 5e-5, batch_size = 32, seed = 42,
    warmup = 0.1, weight_decay = 0.01, eval_every = None, max_steps = None,
    precision = "f32".to_string(), device = None, force = false, resume = false,
), text_signature = "(model, out, *, task=None, data=None, epochs=3, lr=5e-5, batch_size=32, \
    seed=42, warmup=0.1, weight_decay=0.01, eval_every=None, max_steps=None, precision='f32', \
    device=None, force=False, resume=False)")]
#[allow(clippy::too_many_arguments)]
fn finetune<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = arguments::model)] model: PathBuf,
    #[pyo3(from_py_with = arguments::out)] out: PathBuf,
    #[pyo3(from_py_with = arguments::task)] task: Option<String>,
    #[pyo3(from_py_with = arguments::data)] data: Option<Bound<'py, PyDict>>,
    #[pyo3(from_py_with = arguments::epochs)] epochs: usize,
    #[pyo3(from_py_with = arguments::lr)] lr: f64,
    #[pyo3(from_py_with = arguments::batch_size)] batch_size: usize,
    #[pyo3(from_py_with = arguments::seed)] seed: u64,
    #[pyo3(from_py_with = arguments::warmup)] warmup: f64,
    #[pyo3(from_py_with = arguments::weight_decay)] weight_decay: f64,
    #[pyo3(from_py_with = arguments::eval_every)] eval_every: Option<usize>,
    #[pyo3(from_py_with = arguments::max_steps)] max_steps: Option<usize>,
    #[pyo3(from_py_with = arguments::precision)] precision: String,
    #[pyo3(from_py_with = arguments::device)] device: Option<String>,
    #[pyo3(from_py_with = arguments::force)] force: bool,
    #[pyo3(from_py_with = arguments::resume)] resume: bool,
) -> PyResult<Bound<'py, PyAny>> {
    refuse_force_with_resume(force, resume)?;
    let args = kd_runner::finetune::FinetuneArgs {
        model: utf8(model, "model")?,
        out,
        force,
        resume,
        eval_every,
        epochs,
        lr,
        batch_size,
        seed,
        warmup,
        weight_decay,
        max_steps,
        precision: precision
            .parse()
            .map_err(|error| PyValueError::new_err(format!("argument 'precision': {error:#}")))?,
        device: DeviceArg {
            name: parse_device(device)?,
        },
        data: data_spec(task, data.as_ref())?,
    };
    let command = python_command(py, "kd.finetune");
    let call = Call {
        name: "kd.finetune",
        stops: Stops::AtNextStep,
        output: Some(&args.out),
    };
    let report = run_detached(py, &call, |stop| {
        let report = kd_runner::finetune::run(&args, stop, &command)?;
        if report.interrupted {
            return Err(interrupted(call.name, &args.out).into());
        }
        Ok(report)
    })?;
    to_python(py, &report)
}

/// Evaluate a task model on a task's dev file (or `data`'s `dev` file), as `kd eval` does;
/// returns the task, the file, the number of examples and the metrics by name. It cannot stop
/// part-way: at Ctrl-C it finishes, then raises KeyboardInterrupt.
#[pyfunction]
#[pyo3(signature = (model, *, task = None, data = None, batch_size = 128, device = None))]
fn evaluate<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = arguments::model)] model: PathBuf,
    #[pyo3(from_py_with = arguments::task)] task: Option<String>,
    #[pyo3(from_py_with = arguments::data)] data: Option<Bound<'py, PyDict>>,
    #[pyo3(from_py_with = arguments::batch_size)] batch_size: usize,
    #[pyo3(from_py_with = arguments::device)] device: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let args = kd_runner::evaluate::EvalArgs {
        model: utf8(model, "model")?,
        batch_size,
        device: DeviceArg {
            name: parse_device(device)?,
        },
        data: data_spec(task, data.as_ref())?,
    };
    let call = Call {
        name: "kd.evaluate",
        stops: Stops::WhenDone,
        output: None,
    };
    let metrics = run_detached(py, &call, |_stop| kd_runner::evaluate::run(&args))?;
    to_python(py, &metrics)
}

/// Batches kd.predict answers between two looks at Ctrl-C's flag.
const PREDICT_BATCHES: usize = 8;

/// A text to predict: one sentence, or a pair.
enum Text {
    One(String),
    Pair(String, String),
}

/// Said in one line (a derived extraction says why each variant failed).
impl<'a, 'py> FromPyObject<'a, 'py> for Text {
    type Error = PyErr;

    fn extract(text: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(one) = text.extract() {
            return Ok(Self::One(one));
        }
        let (text, pair) = text.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "each text must be a str or a (text, pair) tuple of str, not {}",
                type_name(&text)
            ))
        })?;
        Ok(Self::Pair(text, pair))
    }
}

/// A task model's answers to `texts` (each a str, or a (text, pair) tuple for a sentence-pair
/// task), in their order, as `kd predict` writes them: a dict a text with the text (and
/// pair), then the label and the probabilities by label, or the score. Ctrl-C stops it
/// between batches and raises KeyboardInterrupt.
#[pyfunction]
#[pyo3(signature = (model, texts, *, batch_size = 64, max_seq_len = 128, device = None))]
fn predict<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = arguments::model)] model: PathBuf,
    #[pyo3(from_py_with = arguments::texts)] texts: Vec<Text>,
    #[pyo3(from_py_with = arguments::batch_size)] batch_size: usize,
    #[pyo3(from_py_with = arguments::max_seq_len)] max_seq_len: usize,
    #[pyo3(from_py_with = arguments::device)] device: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let model = utf8(model, "model")?;
    let device = parse_device(device)?;
    let examples: Vec<Example> = texts
        .into_iter()
        .map(|text| {
            let (text, pair) = match text {
                Text::One(text) => (text, None),
                Text::Pair(text, pair) => (text, Some(pair)),
            };
            Example {
                text,
                pair,
                label: Label::Unlabeled,
            }
        })
        .collect();
    let call = Call {
        name: "kd.predict",
        stops: Stops::BetweenBatches,
        output: None,
    };
    let answers = run_detached(py, &call, |stop| {
        let device = kd_bert::device::select(device)?;
        let model = TaskModel::open(&model, max_seq_len, &device)?;
        // A piece at a time, so that Ctrl-C stops it promptly; each piece batched by length.
        let mut answers = Vec::with_capacity(examples.len());
        for piece in examples.chunks(PREDICT_BATCHES * batch_size.max(1)) {
            if stop.load(Ordering::SeqCst) {
                return Err(Interrupted(format!(
                    "interrupted: {} stopped after {} of {} texts; their answers are dropped",
                    call.name,
                    answers.len(),
                    examples.len()
                ))
                .into());
            }
            answers.extend(kd_runner::predict::predict(&model, piece, batch_size)?);
        }
        Ok(answers)
    })?;
    to_python(py, &answers)
}

/// Models side by side on the same dev examples, as `kd compare` does: each one's metric with
/// a bootstrap interval, agreement, KL and McNemar's test against the reference (`teacher`,
/// else the first of `models`), size, batch-1 latency, throughput and peak memory. Returns
/// `{"rows": [...], "table": markdown}`; with `out`, also writes compare.md, compare.json and
/// the charts there. Latency is timed in a child `kd` process when `$KD_BIN` names the kd
/// program, else in this process. It cannot stop part-way: at Ctrl-C it finishes, then raises
/// KeyboardInterrupt.
#[pyfunction]
#[pyo3(signature = (
    models, *, teacher = None, task = None, data = None, out = None, force = false,
    bootstrap = 1000, threads = 2, onnx_python = None, device = None,
))]
#[allow(clippy::too_many_arguments)]
fn compare<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = arguments::models)] models: Vec<PathBuf>,
    #[pyo3(from_py_with = arguments::teacher)] teacher: Option<PathBuf>,
    #[pyo3(from_py_with = arguments::task)] task: Option<String>,
    #[pyo3(from_py_with = arguments::data)] data: Option<Bound<'py, PyDict>>,
    #[pyo3(from_py_with = arguments::out)] out: Option<PathBuf>,
    #[pyo3(from_py_with = arguments::force)] force: bool,
    #[pyo3(from_py_with = arguments::bootstrap)] bootstrap: usize,
    #[pyo3(from_py_with = arguments::threads)] threads: usize,
    #[pyo3(from_py_with = arguments::onnx_python)] onnx_python: Option<PathBuf>,
    #[pyo3(from_py_with = arguments::device)] device: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    if models.is_empty() {
        return Err(PyValueError::new_err(
            "argument 'models': give at least one model",
        ));
    }
    let args = kd_report::compare::CompareArgs {
        models: models
            .into_iter()
            .map(|model| utf8(model, "models"))
            .collect::<PyResult<_>>()?,
        teacher: teacher.map(|model| utf8(model, "teacher")).transpose()?,
        data: data_spec(task, data.as_ref())?,
        out,
        force,
        bootstrap,
        threads,
        onnx_python,
        device: DeviceArg {
            name: parse_device(device)?,
        },
    };
    let call = Call {
        name: "kd.compare",
        stops: Stops::WhenDone,
        output: args.out.as_deref(),
    };
    let comparison = run_detached(py, &call, |_stop| kd_report::compare::run(&args))?;
    to_python(py, &comparison)
}

/// kd's data description from `task` and the `data` dict (DataSpec's fields by name), none
/// of its paths "" (which kd would take as the current directory).
fn data_spec(task: Option<String>, data: Option<&Bound<'_, PyDict>>) -> PyResult<DataSpec> {
    let mut spec = match data {
        Some(data) => DataSpec::deserialize(to_toml(data.as_any(), "data")?)
            .map_err(|error| PyValueError::new_err(format!("argument 'data': {error}")))?,
        None => DataSpec::default(),
    };
    let paths = [
        ("data_dir", &spec.data_dir),
        ("train", &spec.train),
        ("dev", &spec.dev),
        ("augment", &spec.augment),
    ];
    let paths = paths
        .into_iter()
        .filter_map(|(key, path)| Some((key, path.as_ref()?)))
        .chain(spec.unlabeled.iter().map(|path| ("unlabeled", path)));
    for (key, path) in paths {
        if path.as_os_str().is_empty() {
            return Err(PyValueError::new_err(format!(
                "argument 'data': {key:?} is an empty path"
            )));
        }
    }
    if task.is_some() {
        spec.task = task;
    }
    Ok(spec)
}

/// What an interrupted `call` raises (as KeyboardInterrupt): where its work is kept and how to
/// go on.
fn interrupted(call: &str, out: &Path) -> Interrupted {
    Interrupted(format!(
        "interrupted: the work done is kept in {}; call {call} again with the same arguments \
         and resume=True to continue",
        out.display()
    ))
}

/// A recipe as given: a file's path, or a dict read as TOML.
enum RecipeSource {
    File(PathBuf),
    Dict(toml::Value),
}

impl RecipeSource {
    fn from_python(recipe: &Bound<'_, PyAny>) -> PyResult<Self> {
        if recipe.is_instance_of::<PyDict>() {
            return Ok(Self::Dict(to_toml(recipe, "recipe")?));
        }
        refuse_empty_path(recipe, "recipe")?;
        recipe.extract().map(Self::File).map_err(|_| {
            PyTypeError::new_err(format!(
                "argument 'recipe': expected a path (str or os.PathLike) or a dict, not {}",
                type_name(recipe)
            ))
        })
    }
}

/// `overrides` as `kd distill --set` assignments: `key=value`, a str value as it is (read as
/// `--set` reads it), any other value written as TOML.
fn assignments(overrides: &Bound<'_, PyDict>) -> PyResult<Vec<String>> {
    overrides
        .iter()
        .map(|(key, value)| {
            let Ok(key) = key.extract::<String>() else {
                let kind = type_name(&key);
                return Err(PyTypeError::new_err(format!(
                    "argument 'overrides': keys must be str (\"stages.0.epochs\"), not {kind}"
                )));
            };
            let value = match value.cast::<PyString>() {
                Ok(text) => text.to_string(),
                Err(_) => to_toml(&value, &format!("overrides[{key:?}]"))?.to_string(),
            };
            Ok(format!("{key}={value}"))
        })
        .collect()
}

/// `force=True` would delete the run that `resume=True` asks to continue: the kd command refuses
/// the pair too ("--force cannot be used with --resume").
fn refuse_force_with_resume(force: bool, resume: bool) -> PyResult<()> {
    match force && resume {
        true => Err(PyValueError::new_err(
            "force=True cannot be used with resume=True: force starts the run again, deleting \
             what resume would continue",
        )),
        false => Ok(()),
    }
}

fn parse_device(device: Option<String>) -> PyResult<Option<DeviceName>> {
    device
        .map(|name| name.parse::<DeviceName>())
        .transpose()
        .map_err(|error| PyValueError::new_err(format!("argument 'device': {error:#}")))
}

/// `name` as one of the values `T` takes on the command line (`dtype="f16"`).
fn choice<T: clap::ValueEnum>(argument: &str, name: &str) -> PyResult<T> {
    T::from_str(name, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|value| value.to_possible_value())
            .map(|value| format!("{:?}", value.get_name()))
            .collect();
        PyValueError::new_err(format!(
            "argument '{argument}': expected one of {}, not {name:?}",
            names.join(", ")
        ))
    })
}

fn utf8(path: PathBuf, argument: &str) -> PyResult<String> {
    path.into_os_string().into_string().map_err(|path| {
        PyValueError::new_err(format!(
            "argument '{argument}': {path:?} is not valid UTF-8"
        ))
    })
}

/// What a run records as its command: the Python program's arguments and the call.
fn python_command(py: Python<'_>, call: &str) -> String {
    let argv = py
        .import("sys")
        .and_then(|sys| sys.getattr("argv"))
        .and_then(|argv| argv.extract::<Vec<String>>())
        .unwrap_or_default();
    format!("python {} ({call})", argv.join(" "))
}
