//! Between Python and kd: [`run_detached`] runs kd's work with the GIL released, Ctrl-C asking
//! it to stop and kd's errors becoming [`KdError`] in Python's words ([`python_words`]);
//! [`to_python`] hands back what kd serializes (summaries, reports) as Python dicts and lists;
//! [`to_toml`] reads Python values as TOML (a recipe given as a dict, `--set` overrides).

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pyo3::create_exception!(
    kd,
    KdError,
    PyRuntimeError,
    "An error from kd; its message is kd's own, with every cause (as the kd command prints it)."
);

/// Returned (as the error) by work that `stop` ended early: raised in Python as
/// KeyboardInterrupt with this message, which says what was kept and how to go on. Never a
/// success.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// A call of the package's, as [`run_detached`] tells the user about it.
pub struct Call<'a> {
    /// As the user wrote it: "kd.distill".
    pub name: &'static str,
    pub stops: Stops,
    /// Where the call writes what it makes, if anywhere.
    pub output: Option<&'a Path>,
}

/// How a call's work answers Ctrl-C.
#[derive(Clone, Copy, PartialEq)]
pub enum Stops {
    /// A training run: at its next step, saving a checkpoint that `resume=True` continues.
    AtNextStep,
    /// Between batches, keeping nothing (kd.predict).
    BetweenBatches,
    /// Not part-way: kd's library has no way to stop the work (evaluate, compare, export), and
    /// abandoning it would leave it running in the caller's process (and an export writing
    /// after the user was told it stopped). It finishes, then KeyboardInterrupt is raised.
    WhenDone,
}

/// How often the waiting caller takes the GIL back to run Python's signal handlers.
const POLL: Duration = Duration::from_millis(100);

/// Runs `work` on a thread of its own, inside candle's CPU thread pool as the kd command does
/// (experiments/src/main.rs), while the calling thread waits with the GIL released and, every
/// [`POLL`], takes it back to run Python's signal handlers. When one raises (Ctrl-C's
/// KeyboardInterrupt), the flag given to `work` is set and standard error says what `call`
/// does about it ([`Stops`]); the exception is raised once `work` has returned, with a message
/// that says what was kept: [`Interrupted`]'s when `work` stopped early, else that `call`
/// finished (and where its output is), so that a script's Ctrl-C still ends the script.
/// `work`'s error is raised as [`KdError`] ([`kd_error`]). The process's SIGINT handling stays
/// Python's (no `kd_train::interrupt_flag`). Signals reach only Python's main thread: called
/// from another, Ctrl-C does not stop `work`.
pub fn run_detached<T, F>(py: Python<'_>, call: &Call<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&AtomicBool) -> anyhow::Result<T> + Send,
{
    let stop = AtomicBool::new(false);
    let caller = std::thread::current();
    let (result, signal) = std::thread::scope(|scope| {
        let stop = &stop;
        let worker = scope.spawn(move || {
            let result = candle_core::Device::Cpu.with_context(|| work(stop));
            caller.unpark();
            result
        });
        let mut signal: Option<PyErr> = None;
        while !worker.is_finished() {
            py.detach(|| std::thread::park_timeout(POLL));
            if let Err(error) = py.check_signals() {
                // Unlike the kd command, a second Ctrl-C does not end the process (it is the
                // caller's): the work stops as the first one said.
                if signal.is_none() {
                    eprintln!("\ninterrupted: {}", call.stopping());
                }
                stop.store(true, Ordering::SeqCst);
                signal.get_or_insert(error);
            }
        }
        let result = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (result, signal)
    });
    let keyboard =
        |signal: PyErr, message: String| match signal.is_instance_of::<PyKeyboardInterrupt>(py) {
            true => PyKeyboardInterrupt::new_err(message),
            false => signal,
        };
    match (result, signal) {
        (Ok(value), None) => Ok(value),
        (Err(error), Some(signal)) if error.is::<Interrupted>() => {
            Err(keyboard(signal, error.to_string()))
        }
        (Err(error), _) => Err(kd_error(&error, call)),
        (Ok(_), Some(signal)) => Err(keyboard(signal, call.finished())),
    }
}

impl Call<'_> {
    /// What standard error says at Ctrl-C.
    fn stopping(&self) -> String {
        let name = self.name;
        match self.stops {
            Stops::AtNextStep => format!("{name} stops at its next step and saves a checkpoint"),
            Stops::BetweenBatches => format!("{name} stops after its current batches"),
            Stops::WhenDone => {
                format!("{name} cannot stop part-way; it stops when its work is done")
            }
        }
    }

    /// KeyboardInterrupt's message when the work finished before it could stop.
    fn finished(&self) -> String {
        match self.output {
            Some(out) => format!(
                "interrupted after {} had finished: its output in {} is complete",
                self.name,
                out.display()
            ),
            None => format!(
                "interrupted after {} had finished; its result is dropped",
                self.name
            ),
        }
    }
}

/// kd's `error` as [`KdError`], with its full message (every cause, as the kd command prints
/// it) in the words of a Python call ([`python_words`]).
pub fn kd_error(error: &anyhow::Error, call: &Call<'_>) -> PyErr {
    KdError::new_err(python_words(&format!("{error:#}"), call.stops))
}

/// Phrases of kd's messages that say something else from Python, before [`python_words`]
/// translates their flags: a run's directory that is not empty may hold an interrupted run,
/// which `force=True` would delete.
const RUN_PHRASES: [(&str, &str); 1] = [(
    "pass --force to overwrite it",
    "pass resume=True to continue the run it holds, or force=True to overwrite it",
)];

/// kd's flags that are bool arguments in Python (`--force` is `force=True`).
const BOOL_FLAGS: [&str; 4] = ["force", "resume", "restore-heads", "regression"];

/// `message` (kd's, written for the command line) with its flags as the keyword arguments (or
/// `data` keys) that say the same from Python: `--max-steps` is `max_steps`, `--bootstrap 10`
/// `bootstrap=10`, a bool flag `force=True`, and `--set K=V` the override `K=V`; for a run
/// (`stops`), a suggestion of `--force` also names `resume=True`. Text in `backticks` quotes a
/// command and stays as it is.
pub fn python_words(message: &str, stops: Stops) -> String {
    let mut message = message.to_string();
    if stops == Stops::AtNextStep {
        for (phrase, words) in RUN_PHRASES {
            message = message.replace(phrase, words);
        }
    }
    message
        .split('`')
        .enumerate()
        .map(|(index, part)| match index % 2 {
            0 => without_flags(part),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join("`")
}

/// `text` with each `--flag` as a Python keyword ([`python_words`]). A flag begins a word: the
/// `--` inside a name (the hub cache's `models--org--name`) stays.
fn without_flags(text: &str) -> String {
    let mut words = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        words.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(after.len());
        let (flag, tail) = after.split_at(end);
        let begins_word = words
            .chars()
            .last()
            .is_none_or(|c| c.is_whitespace() || c == '(');
        if !begins_word || !flag.starts_with(|c: char| c.is_ascii_lowercase()) {
            words.push_str("--");
            rest = after;
            continue;
        }
        let keyword = flag.replace('-', "_");
        let number = tail
            .strip_prefix(' ')
            .filter(|value| value.starts_with(|c: char| c.is_ascii_digit()));
        rest = match (flag, number) {
            ("set", _) if tail.starts_with(' ') => {
                words.push_str("the override");
                tail
            }
            _ if BOOL_FLAGS.contains(&flag) => {
                words.push_str(&format!("{keyword}=True"));
                tail
            }
            (_, Some(number)) => {
                words.push_str(&format!("{keyword}="));
                number
            }
            _ => {
                words.push_str(&keyword);
                tail
            }
        };
    }
    words.push_str(rest);
    words
}

/// `value` (anything kd serializes: a summary, a report) as the Python object its JSON reads
/// as: dicts (in field order), lists, str, int, float, bool and None; a non-finite float is
/// None, as in the JSON the kd command prints.
pub fn to_python<'py>(py: Python<'py>, value: &impl Serialize) -> PyResult<Bound<'py, PyAny>> {
    let value = serde_json::to_value(value).map_err(|error| KdError::new_err(error.to_string()))?;
    json_to_python(py, &value)
}

fn json_to_python<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(flag) => PyBool::new(py, *flag).to_owned().into_any(),
        Value::Number(number) => match (number.as_i64(), number.as_u64()) {
            (Some(int), _) => int.into_pyobject(py)?.into_any(),
            (None, Some(int)) => int.into_pyobject(py)?.into_any(),
            _ => PyFloat::new(py, number.as_f64().unwrap_or(f64::NAN)).into_any(),
        },
        Value::String(text) => PyString::new(py, text).into_any(),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|item| json_to_python(py, item))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        Value::Object(fields) => {
            let dict = PyDict::new(py);
            for (key, item) in fields {
                dict.set_item(key, json_to_python(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A Python value as TOML, `at` naming it in errors (`recipe["stages"][0]`): dicts with str
/// keys are tables (a None value leaves its key out: TOML has no null), lists and tuples
/// arrays, and bool, int, float, str and os.PathLike (a str) the scalars.
pub fn to_toml(value: &Bound<'_, PyAny>, at: &str) -> PyResult<toml::Value> {
    if let Ok(flag) = value.cast::<PyBool>() {
        return Ok(toml::Value::Boolean(flag.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        let int = value.extract::<i64>().map_err(|_| {
            PyValueError::new_err(format!(
                "{at}: {value} does not fit in 64 bits, as TOML asks"
            ))
        })?;
        return Ok(toml::Value::Integer(int));
    }
    if let Ok(float) = value.cast::<PyFloat>() {
        return Ok(toml::Value::Float(float.value()));
    }
    if value.is_instance_of::<PyString>() {
        return Ok(toml::Value::String(value.extract()?));
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut table = toml::Table::new();
        for (key, item) in dict.iter() {
            let Ok(key) = key.extract::<String>() else {
                let kind = type_name(&key);
                return Err(PyTypeError::new_err(format!(
                    "{at}: keys must be str, not {kind}"
                )));
            };
            if !item.is_none() {
                let item = to_toml(&item, &format!("{at}[{key:?}]"))?;
                table.insert(key, item);
            }
        }
        return Ok(toml::Value::Table(table));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let items = value
            .try_iter()?
            .enumerate()
            .map(|(index, item)| to_toml(&item?, &format!("{at}[{index}]")))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(toml::Value::Array(items));
    }
    if value.hasattr("__fspath__")? {
        let path: PathBuf = value.extract()?;
        let path = path
            .into_os_string()
            .into_string()
            .map_err(|path| PyValueError::new_err(format!("{at}: {path:?} is not valid UTF-8")))?;
        return Ok(toml::Value::String(path));
    }
    let kind = type_name(value);
    Err(PyTypeError::new_err(format!(
        "{at}: a {kind} has no TOML form (expected dict, list, tuple, str, int, float, bool or \
         os.PathLike)"
    )))
}

/// The name of `value`'s type, for errors.
pub fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "object".to_string())
}
