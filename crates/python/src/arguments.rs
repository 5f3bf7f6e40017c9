//! The functions' arguments as Rust values, with errors that name the argument in their message:
//! pyo3 0.30 names it only in a note, which Python before 3.11 neither keeps nor prints. Each
//! argument has an extractor of its name, given to `#[pyo3(from_py_with = arguments::NAME)]`,
//! and a kind, checked first: an empty path would be the current directory (finetune's run
//! files among the user's), and a str where a list is meant would be a list of letters.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::path::PathBuf;

/// What an argument holds, beyond its Rust type.
#[derive(Clone, Copy)]
enum Kind {
    Value,
    /// A path (str or os.PathLike), or None: not "".
    Path,
    /// A list of values: not one str, bytes or path.
    List,
    /// A list of paths: a list, none of them "".
    Paths,
}

macro_rules! arguments {
    ($($name:ident: $kind:ident),* $(,)?) => {$(
        pub fn $name<'a, 'py, T>(value: &'a Bound<'py, PyAny>) -> PyResult<T>
        where
            T: FromPyObject<'a, 'py>,
        {
            extract(value, stringify!($name), Kind::$kind)
        }
    )*};
}

arguments! {
    model: Path, out: Path, teacher: Path, cache_dir: Path, onnx_python: Path,
    models: Paths, prune_vocab: Paths, texts: List,
    overrides: Value, data: Value, task: Value, device: Value, precision: Value,
    dtype: Value, quantize: Value, format: Value,
    epochs: Value, lr: Value, batch_size: Value, seed: Value, warmup: Value,
    weight_decay: Value, eval_every: Value, max_steps: Value, max_train_examples: Value,
    max_seq_len: Value, bootstrap: Value, threads: Value,
    force: Value, resume: Value, restore_heads: Value,
}

/// `value` as a `T`, refused (naming `argument`) when it is not of `kind` or `T`.
fn extract<'a, 'py, T>(value: &'a Bound<'py, PyAny>, argument: &str, kind: Kind) -> PyResult<T>
where
    T: FromPyObject<'a, 'py>,
{
    match kind {
        Kind::Value => {}
        Kind::Path => refuse_empty_path(value, argument)?,
        Kind::List => refuse_single(value, argument)?,
        Kind::Paths => {
            refuse_single(value, argument)?;
            // What is not a list of paths is the extraction's to refuse.
            if let Ok(items) = value.try_iter() {
                for item in items.flatten() {
                    refuse_empty_path(&item, argument)?;
                }
            }
        }
    }
    value
        .extract::<T>()
        .map_err(|error| named(value, argument, error.into()))
}

/// pyo3's `error` for `value`, its message naming `argument`: an int out of an unsigned type's
/// range (OverflowError) is a ValueError, as the stubs say.
fn named(value: &Bound<'_, PyAny>, argument: &str, error: PyErr) -> PyErr {
    let py = value.py();
    if error.is_instance_of::<PyOverflowError>(py) {
        return match value.lt(0) {
            Ok(true) => PyValueError::new_err(format!(
                "argument '{argument}' must not be negative, not {value}"
            )),
            _ => PyValueError::new_err(format!("argument '{argument}': {value} is too large")),
        };
    }
    let message = format!("argument '{argument}': {}", error.value(py));
    match error.is_instance_of::<PyValueError>(py) {
        true => PyValueError::new_err(message),
        false => PyTypeError::new_err(message),
    }
}

/// A path argument of "" (str or os.PathLike) is refused: kd would take it as the current
/// directory. Anything else is left to the extraction.
pub fn refuse_empty_path(value: &Bound<'_, PyAny>, argument: &str) -> PyResult<()> {
    match value.extract::<PathBuf>() {
        Ok(path) if path.as_os_str().is_empty() => Err(PyValueError::new_err(format!(
            "argument '{argument}' is an empty path"
        ))),
        _ => Ok(()),
    }
}

/// One str, bytes or path where a list is meant is refused (pyo3 would say "Can't extract
/// `str` to `Vec`", or read a path's letters).
fn refuse_single(value: &Bound<'_, PyAny>, argument: &str) -> PyResult<()> {
    let single = value.is_instance_of::<PyString>()
        || value.is_instance_of::<PyBytes>()
        || value.hasattr("__fspath__")?;
    match single {
        true => Err(PyTypeError::new_err(format!(
            "argument '{argument}': expected a list, not one {} (write [{}])",
            crate::bridge::type_name(value),
            value.repr()?
        ))),
        false => Ok(()),
    }
}
