//! Tables of examples from the files users have, chosen by extension: TSV (GLUE's: tab-separated
//! with a header line, fields verbatim, quote characters being text), CSV (RFC 4180 quoting, a
//! header line), JSON Lines (an object a line, its keys the columns) and Parquet (as pandas,
//! pyarrow and HF `datasets` write it: text, number and boolean columns; a class-label column
//! reads as its integer ids). Columns are found by name in every format. Reading is strict: a
//! ragged row, a missing key or null, or a column of another type is an error naming the file
//! and the line (or row) when the value is used.

use anyhow::{Context, Result, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatchReader};
use arrow_schema::DataType;
use std::path::{Path, PathBuf};

/// The extensions of the table files kd reads.
pub const TABLE_EXTENSIONS: [&str; 4] = ["tsv", "csv", "jsonl", "parquet"];

/// A table file's format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Tsv,
    Csv,
    JsonLines,
    Parquet,
}

impl Format {
    /// The format of `path` by its extension, `None` for another one.
    pub fn of(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match extension.as_str() {
            "tsv" => Self::Tsv,
            "csv" => Self::Csv,
            "jsonl" => Self::JsonLines,
            "parquet" => Self::Parquet,
            _ => return None,
        })
    }

    /// The format of `path`, or an error listing the extensions kd reads.
    pub fn require(path: &Path) -> Result<Self> {
        Self::of(path).with_context(|| {
            format!(
                "{}: unknown file type; kd reads {}",
                path.display(),
                TABLE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
            )
        })
    }
}

/// One value of a table.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Value(String),
    /// A JSON line without the key, or a null.
    Missing,
    /// A JSON array or object.
    Nested,
}

/// A table read whole: its header and its rows' values as text.
pub(crate) struct Table {
    path: PathBuf,
    format: Format,
    header: Vec<String>,
    /// Per column, the type that cannot be read as text (Parquet lists, structs...).
    unreadable: Vec<Option<String>>,
    /// `(line number, or row number for Parquet, from 1; values)`; TSV and CSV count the
    /// header as line 1.
    rows: Vec<(usize, Vec<Cell>)>,
}

impl Table {
    /// Reads `path` in the format its extension names.
    pub fn read(path: &Path) -> Result<Self> {
        let format = Format::require(path)?;
        let (header, unreadable, rows) = match format {
            Format::Tsv => read_tsv(path)?,
            Format::Csv => read_csv(path)?,
            Format::JsonLines => read_json_lines(path)?,
            Format::Parquet => read_parquet(path)?,
        };
        let unreadable = match unreadable.is_empty() {
            true => vec![None; header.len()],
            false => unreadable,
        };
        Ok(Self {
            path: path.to_path_buf(),
            format,
            header,
            unreadable,
            rows,
        })
    }

    /// The index of a named column; the error lists the columns there are, or names a
    /// column's type kd cannot read as text.
    pub fn column(&self, name: &str) -> Result<usize> {
        let index = header_column(&self.path.display().to_string(), &self.header, name)?;
        if self.header[index + 1..].iter().any(|h| h == name) {
            bail!(
                "{}: two columns are named {name:?}: rename one",
                self.path.display()
            );
        }
        if let Some(kind) = &self.unreadable[index] {
            bail!(
                "{}: column {name:?} holds {kind}, not text, numbers or booleans",
                self.path.display()
            );
        }
        Ok(index)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Row `row`'s line (or row) number.
    pub fn number(&self, row: usize) -> usize {
        self.rows[row].0
    }

    /// Where row `row` is, for messages: `file:line`, or `file, row N` for Parquet.
    pub fn place(&self, row: usize) -> String {
        match self.format {
            Format::Parquet => format!("{}, row {}", self.path.display(), self.number(row)),
            _ => format!("{}:{}", self.path.display(), self.number(row)),
        }
    }

    /// The value of `column` (an index from [`Table::column`]) in row `row`.
    pub fn value(&self, row: usize, column: usize) -> Result<&str> {
        let name = &self.header[column];
        match &self.rows[row].1[column] {
            Cell::Value(value) => Ok(value),
            Cell::Missing if self.format == Format::JsonLines => {
                bail!("{}: no value for key {name:?}", self.place(row))
            }
            Cell::Missing => bail!("{}: column {name:?} is null", self.place(row)),
            Cell::Nested => bail!(
                "{}: {name:?} is an array or object, not text or a number",
                self.place(row)
            ),
        }
    }
}

/// The texts (and pairs) of a table file by column name, each with its row's line (or row,
/// for Parquet) number.
pub fn read_texts(
    path: &Path,
    text_column: &str,
    pair_column: Option<&str>,
) -> Result<Vec<(usize, String, Option<String>)>> {
    let table = Table::read(path)?;
    let text = table.column(text_column)?;
    let pair = pair_column.map(|c| table.column(c)).transpose()?;
    (0..table.len())
        .map(|row| {
            let pair = pair.map(|p| table.value(row, p)).transpose()?;
            Ok((
                table.number(row),
                table.value(row, text)?.to_string(),
                pair.map(str::to_string),
            ))
        })
        .collect()
}

type Read = (Vec<String>, Vec<Option<String>>, Vec<(usize, Vec<Cell>)>);

fn read_tsv(path: &Path) -> Result<Read> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        bail!("{} is empty: expected a header line", path.display());
    };
    let header = tsv_header(header);
    let mut rows = Vec::new();
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let place = || format!("{}:{}", path.display(), index + 1);
        let fields = tsv_fields(line, &header, place)?;
        rows.push((
            index + 1,
            fields.into_iter().map(|f| Cell::Value(f.into())).collect(),
        ));
    }
    Ok((header, Vec::new(), rows))
}

/// A TSV header line's column names, trimmed.
pub fn tsv_header(line: &str) -> Vec<String> {
    line.split('\t').map(|s| s.trim().to_string()).collect()
}

/// A TSV line's fields, one for each column of `header`; otherwise an error naming the line
/// (`place`: `file:line`) and the columns expected.
pub fn tsv_fields<'a>(
    line: &'a str,
    header: &[String],
    place: impl FnOnce() -> String,
) -> Result<Vec<&'a str>> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != header.len() {
        bail!(
            "{}: expected {} tab-separated fields ({}), found {}",
            place(),
            header.len(),
            header.join(", "),
            fields.len()
        );
    }
    Ok(fields)
}

fn read_csv(path: &Path) -> Result<Read> {
    let text = read_text(path)?;
    // Rows are numbered by the line they start on, counted from their byte offsets: the csv
    // crate's own line count skips blank lines, and a record's offset is where the blank
    // lines before it begin.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |position: Option<&csv::Position>| {
        position.map_or(0, |p| {
            let start = p.byte() as usize;
            let blank = text.as_bytes()[start.min(text.len())..]
                .iter()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
            line_starts.partition_point(|&line| line <= start + blank)
        })
    };
    // Flexible, so that a line of spaces (which pandas skips, as kd does in TSV) is told
    // apart from a ragged row here.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let describe = |error: csv::Error| -> anyhow::Error {
        anyhow::anyhow!("{}:{}: {error}", path.display(), line_of(error.position()))
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(describe)?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if header.iter().all(String::is_empty) {
        bail!("{} is empty: expected a header line", path.display());
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(describe)?;
        let line = line_of(record.position());
        if record.len() == 1 && record[0].trim().is_empty() {
            continue;
        }
        if record.len() != header.len() {
            bail!(
                "{}:{line}: expected {} comma-separated fields, found {}",
                path.display(),
                header.len(),
                record.len()
            );
        }
        rows.push((line, record.iter().map(|f| Cell::Value(f.into())).collect()));
    }
    Ok((header, Vec::new(), rows))
}

fn read_json_lines(path: &Path) -> Result<Read> {
    let text = read_text(path)?;
    let mut header: Vec<String> = Vec::new();
    let mut objects = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), index + 1))?;
        for key in object.keys() {
            if !header.contains(key) {
                header.push(key.clone());
            }
        }
        objects.push((index + 1, object));
    }
    if objects.is_empty() {
        bail!("{} is empty: expected a JSON object a line", path.display());
    }
    let rows = objects
        .into_iter()
        .map(|(line, object)| {
            let cells = header.iter().map(|key| match object.get(key) {
                None | Some(serde_json::Value::Null) => Cell::Missing,
                Some(serde_json::Value::String(text)) => Cell::Value(text.clone()),
                Some(serde_json::Value::Array(_) | serde_json::Value::Object(_)) => Cell::Nested,
                Some(value) => Cell::Value(value.to_string()),
            });
            (line, cells.collect())
        })
        .collect();
    Ok((header, Vec::new(), rows))
}

/// [`parse_parquet`], with a panic of the parquet crate on a corrupt file (it has some, found
/// by `tests/fuzz.rs`) turned into an error naming the file.
fn read_parquet(path: &Path) -> Result<Read> {
    quiet_catch_unwind(|| parse_parquet(path)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        bail!(
            "{} is not a Parquet file kd can read: {reason}",
            path.display()
        )
    })
}

thread_local! {
    /// Set while this thread runs [`quiet_catch_unwind`]'s closure.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind` without the panic hook's message (it would read as if kd had crashed) for
/// panics on this thread only: the hook in place is wrapped once, never swapped back and forth,
/// so a panic on another thread (a Python caller's, a test harness's) is still reported.
fn quiet_catch_unwind<T>(
    run: impl FnOnce() -> T + std::panic::UnwindSafe,
) -> std::thread::Result<T> {
    static WRAP_HOOK: std::sync::Once = std::sync::Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.get() {
                previous(info);
            }
        }));
    });
    CATCHING.set(true);
    let result = std::panic::catch_unwind(run);
    CATCHING.set(false);
    result
}

fn parse_parquet(path: &Path) -> Result<Read> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let not_parquet = || format!("{} is not a Parquet file kd can read", path.display());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(not_parquet)?
        .build()
        .with_context(not_parquet)?;
    let schema = reader.schema();
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let unreadable: Vec<Option<String>> = schema
        .fields()
        .iter()
        .map(|f| (!readable(f.data_type())).then(|| f.data_type().to_string()))
        .collect();
    let mut columns: Vec<Vec<Cell>> = vec![Vec::new(); header.len()];
    for batch in reader {
        let batch = batch.with_context(not_parquet)?;
        for (column, array) in columns.iter_mut().zip(batch.columns()) {
            append_cells(column, array);
        }
    }
    let count = columns.first().map_or(0, Vec::len);
    let mut columns: Vec<_> = columns.into_iter().map(Vec::into_iter).collect();
    let rows = (1..=count)
        .map(|row| (row, columns.iter_mut().map(|c| c.next().unwrap()).collect()))
        .collect();
    Ok((header, unreadable, rows))
}

/// Whether kd reads a Parquet column of this type as text.
fn readable(kind: &DataType) -> bool {
    match kind {
        DataType::Dictionary(_, values) => readable(values),
        kind => {
            kind.is_integer()
                || kind.is_floating()
                || kind.is_string()
                || *kind == DataType::Boolean
        }
    }
}

/// `array`'s values as text appended to `cells`; nulls (and values of unreadable types, whose
/// column [`Table::column`] refuses) as missing.
fn append_cells(cells: &mut Vec<Cell>, array: &ArrayRef) {
    macro_rules! primitive {
        ($type:ty) => {{
            let values = array.as_primitive::<$type>();
            (0..array.len())
                .map(|i| values.is_valid(i).then(|| values.value(i).to_string()))
                .collect()
        }};
    }
    let values: Vec<Option<String>> = match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect(),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect(),
        DataType::Utf8View => array
            .as_string_view()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect(),
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map(|b| b.to_string()))
            .collect(),
        DataType::Int8 => primitive!(Int8Type),
        DataType::Int16 => primitive!(Int16Type),
        DataType::Int32 => primitive!(Int32Type),
        DataType::Int64 => primitive!(Int64Type),
        DataType::UInt8 => primitive!(UInt8Type),
        DataType::UInt16 => primitive!(UInt16Type),
        DataType::UInt32 => primitive!(UInt32Type),
        DataType::UInt64 => primitive!(UInt64Type),
        DataType::Float32 => primitive!(Float32Type),
        DataType::Float64 => primitive!(Float64Type),
        DataType::Dictionary(..) => {
            let dictionary = array.as_any_dictionary();
            let mut values = Vec::new();
            append_cells(&mut values, dictionary.values());
            let keys = dictionary.normalized_keys();
            (0..array.len())
                .map(|i| match (array.is_valid(i), &values[keys[i]]) {
                    (true, Cell::Value(value)) => Some(value.clone()),
                    _ => None,
                })
                .collect()
        }
        _ => vec![None; array.len()],
    };
    cells.extend(
        values
            .into_iter()
            .map(|v| v.map_or(Cell::Missing, Cell::Value)),
    );
}

/// The index of column `name` in the header of `source`; the error lists the columns there are.
pub fn header_column(source: &str, header: &[impl AsRef<str>], name: &str) -> Result<usize> {
    let header: Vec<&str> = header.iter().map(AsRef::as_ref).collect();
    header.iter().position(|h| *h == name).with_context(|| {
        format!(
            "{source}: no column {name:?} in the header (columns: {})",
            header.join(", ")
        )
    })
}

/// A whole text file, without the byte-order mark that Windows tools put first (it would
/// stick to the first column's name or text, unseen); invalid UTF-8 is an error naming the
/// file and the line.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut text = String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("{}:{line}: not valid UTF-8", path.display())
    })?;
    strip_byte_order_mark(&mut text);
    Ok(text)
}

/// Drops the UTF-8 byte-order mark (U+FEFF) from the start of a file's text, where there is one.
pub fn strip_byte_order_mark(text: &mut String) {
    const BYTE_ORDER_MARK: char = '\u{feff}';
    if text.starts_with(BYTE_ORDER_MARK) {
        text.drain(..BYTE_ORDER_MARK.len_utf8());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn error(path: &Path) -> String {
        format!("{:#}", Table::read(path).err().unwrap())
    }

    /// Reading the file `name` with `bytes` in `dir` fails with a message ending in `ending`.
    fn assert_refused(dir: &Path, name: &str, bytes: &[u8], ending: &str) {
        let error = error(&write(dir, name, bytes));
        assert!(error.ends_with(ending), "{error}");
    }

    /// A panic inside is caught and returned, silenced on this thread only while it runs: the
    /// flag is down again afterwards, and another thread's panics meanwhile are not silenced.
    #[test]
    fn quiet_catch_unwind_silences_only_its_own_panic() {
        assert_eq!(quiet_catch_unwind(|| 7).unwrap(), 7);
        let caught = quiet_catch_unwind::<()>(|| panic!("corrupt page")).unwrap_err();
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"corrupt page"));
        assert!(!CATCHING.get());
        let other_thread =
            quiet_catch_unwind(|| std::thread::spawn(|| CATCHING.get()).join().unwrap());
        assert!(!other_thread.unwrap());
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "train.tsv",
            b"sentence\tlabel\nfine\t1\nbad \xff\t0\n",
        );
        assert!(error(&path).ends_with("train.tsv:3: not valid UTF-8"));
        assert_refused(
            dir.path(),
            "train.csv",
            b"sentence,label\nfine,1\nbad \xff,0\n",
            "train.csv:3: not valid UTF-8",
        );
    }

    #[test]
    fn csv_quotes_and_ragged_rows() {
        let dir = tempfile::tempdir().unwrap();
        let text = "sentence,label\n\"a, \"\"quoted\"\"\nline\",1\nplain,0\n";
        let table = Table::read(&write(dir.path(), "ok.csv", text.as_bytes())).unwrap();
        let sentence = table.column("sentence").unwrap();
        assert_eq!(table.value(0, sentence).unwrap(), "a, \"quoted\"\nline");
        assert_eq!(table.value(1, sentence).unwrap(), "plain");
        // Rows are numbered by the line they start on.
        assert_eq!((table.number(0), table.number(1)), (2, 4));
        assert_refused(
            dir.path(),
            "ragged.csv",
            b"sentence,label\nfine,1\nno label\nok,0\n",
            "ragged.csv:3: expected 2 comma-separated fields, found 1",
        );
    }

    #[test]
    fn json_lines_by_key_with_missing_keys_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"text\": \"good\", \"label\": 1}\n\n{\"label\": 0, \"text\": \"bad\", \
                    \"extra\": [1]}\n{\"text\": \"no label\"}\n";
        let table = Table::read(&write(dir.path(), "data.jsonl", text.as_bytes())).unwrap();
        let (text, label) = (
            table.column("text").unwrap(),
            table.column("label").unwrap(),
        );
        assert_eq!(table.value(1, text).unwrap(), "bad");
        assert_eq!(table.value(0, label).unwrap(), "1");
        assert_eq!(table.number(2), 4);
        let missing = table.value(2, label).unwrap_err().to_string();
        assert!(
            missing.ends_with("data.jsonl:4: no value for key \"label\""),
            "{missing}"
        );
        let extra = table.column("extra").unwrap();
        let nested = table.value(1, extra).unwrap_err().to_string();
        assert!(
            nested.contains("data.jsonl:3: \"extra\" is an array"),
            "{nested}"
        );
        let path = write(dir.path(), "broken.jsonl", b"{\"text\": \"a\"}\n[1, 2]\n");
        assert!(error(&path).contains("broken.jsonl:2: not a JSON object"));
    }

    /// What spreadsheets and Windows tools write: a byte-order mark first, blank lines and
    /// lines of spaces; rows keep the numbers of the lines they stand on.
    #[test]
    fn byte_order_marks_and_blank_lines_are_passed_over_in_every_text_format() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("bom.tsv", "\u{feff}text\tlabel\ngood\t1\n\n   \nbad\t0\n"),
            ("bom.csv", "\u{feff}text,label\ngood,1\n\n   \nbad,0\n"),
            (
                "bom.jsonl",
                "\u{feff}{\"text\": \"good\", \"label\": 1}\n\n  \n{\"text\": \"bad\", \"label\": 0}\n",
            ),
        ];
        for (name, text) in files {
            let table = Table::read(&write(dir.path(), name, text.as_bytes())).unwrap();
            let column = table.column("text").unwrap();
            let rows: Vec<(usize, &str)> = (0..table.len())
                .map(|row| (table.number(row), table.value(row, column).unwrap()))
                .collect();
            let first = usize::from(!name.ends_with(".jsonl")) + 1;
            assert_eq!(rows, [(first, "good"), (first + 3, "bad")], "{name}");
        }
        // A ragged CSV row after blank lines is named by its own line.
        assert_refused(
            dir.path(),
            "late.csv",
            b"text,label\ngood,1\n\n\nugly\nbad,0\n",
            "late.csv:5: expected 2 comma-separated fields, found 1",
        );
    }

    #[test]
    fn a_column_named_twice_is_refused_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "twice.csv", b"text,text,label\na,b,1\n");
        let table = Table::read(&path).unwrap();
        let error = table.column("text").unwrap_err().to_string();
        assert!(
            error.ends_with("two columns are named \"text\": rename one"),
            "{error}"
        );
        assert_eq!(table.column("label").unwrap(), 2);
    }

    #[test]
    fn an_unknown_extension_lists_the_accepted_ones() {
        let dir = tempfile::tempdir().unwrap();
        assert_refused(
            dir.path(),
            "train.xlsx",
            b"",
            "unknown file type; kd reads .tsv, .csv, .jsonl, .parquet",
        );
    }
}
