//! `kd predict`: a task model's labels (or scores) for texts given as arguments or read from a
//! file or standard input, written as JSON Lines (or Parquet) in input order. Plain text and
//! TSV are read in chunks, each batched by length and written before the next is read, so a
//! bad line stops the run with its number after everything before it has been written; CSV,
//! JSON Lines and Parquet are read whole (and checked) first.

use crate::options::DeviceArg;
use anyhow::{Context, Result, bail};
use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, StructArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use clap::Args;
use kd_data::{
    DataSpec, Example, Label, TableFormat, TaskKind, header_column, strip_byte_order_mark,
    tsv_fields, tsv_header,
};
use kd_teacher::TaskModel;
use kd_train::Progress;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Lines read, predicted and written at a time.
const CHUNK_LINES: usize = 4096;

/// The model, the texts (or the file to read them from) and where the predictions go.
#[derive(Args)]
pub struct PredictArgs {
    /// A task model (with a task head): hub id or directory.
    #[arg(long)]
    pub model: String,
    /// Read the texts from this file, or `-` for standard input: plain text, or a table file
    /// (.tsv, .csv, .jsonl, .parquet) by its text column.
    #[arg(long, conflicts_with = "texts")]
    pub input: Option<PathBuf>,
    /// Write the predictions here instead of standard output: JSON Lines, or Parquet when
    /// the name ends in .parquet (columns line, text, pair, then label and a struct of
    /// probabilities by label, or score).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Replace an existing --output file.
    #[arg(long)]
    pub force: bool,
    /// Texts per forward pass (batched by length).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Where the model runs.
    #[command(flatten)]
    pub device: DeviceArg,
    /// How to read the input: a table file by its text column (--text-column and
    /// --pair-column, or a GLUE --task's), and a TSV with a header when one is named;
    /// otherwise one text a line, a tab separating a sentence pair.
    #[command(flatten, next_help_heading = "Data")]
    pub data: DataSpec,
    /// Texts to classify; a tab inside a text separates a sentence pair.
    #[arg(required_unless_present = "input")]
    pub texts: Vec<String>,
}

/// One input line: its number and its text (or sentence pair).
struct Line {
    number: usize,
    example: Example,
}

/// Reads lines one at a time, as plain texts or as TSV rows by column name; blank lines are
/// passed over, as in every table kd reads.
struct LineReader {
    name: String,
    reader: Box<dyn BufRead>,
    number: usize,
    /// The lines handed out so far.
    handed_out: usize,
    /// With a TSV: its header, and the text and pair columns' indices.
    columns: Option<(Vec<String>, usize, Option<usize>)>,
}

impl LineReader {
    fn open(path: &PathBuf, data: &DataSpec) -> Result<Self> {
        let (name, reader): (String, Box<dyn BufRead>) = if path.as_os_str() == "-" {
            ("<stdin>".into(), Box::new(BufReader::new(std::io::stdin())))
        } else {
            let file =
                File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            (path.display().to_string(), Box::new(BufReader::new(file)))
        };
        let mut lines = Self {
            name,
            reader,
            number: 0,
            handed_out: 0,
            columns: None,
        };
        let columns = match data.text_columns()? {
            Some(columns) => Some(columns),
            None if path.extension().is_some_and(|ext| ext == "tsv") => {
                bail!(
                    "{}: which column holds the text? give --text-column",
                    lines.name
                )
            }
            None => None,
        };
        if let Some((text, pair)) = columns {
            let Some(header) = lines.next_line()? else {
                bail!("{} is empty: expected a header line", lines.name);
            };
            let header = tsv_header(&header);
            let hint = match path.as_os_str() == "-" {
                true => {
                    " (standard input is read as TSV: give a CSV, JSON Lines or Parquet file by its path)"
                }
                false => "",
            };
            let find = |column: &str| {
                header_column(&lines.name, &header, column)
                    .map_err(|e| anyhow::anyhow!("{e}{hint}"))
            };
            let (text, pair) = (find(&text)?, pair.as_deref().map(find).transpose()?);
            lines.columns = Some((header, text, pair));
        }
        Ok(lines)
    }

    /// The next line without its line ending; invalid UTF-8 is an error naming the line.
    fn next_line(&mut self) -> Result<Option<String>> {
        let mut bytes = Vec::new();
        let read = self
            .reader
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("cannot read {}", self.name))?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            bytes.pop();
        }
        let mut line = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}:{}: not valid UTF-8", self.name, self.number))?;
        if self.number == 1 {
            strip_byte_order_mark(&mut line);
        }
        Ok(Some(line))
    }

    fn next(&mut self) -> Result<Option<Line>> {
        let line = loop {
            match self.next_line()? {
                None => return Ok(None),
                Some(line) if line.trim().is_empty() => continue,
                Some(line) => break line,
            }
        };
        let example = match &self.columns {
            None => unlabeled(&line),
            Some((header, text, pair)) => {
                let fields =
                    tsv_fields(&line, header, || format!("{}:{}", self.name, self.number))?;
                Example {
                    text: fields[*text].to_string(),
                    pair: pair.map(|p| fields[p].to_string()),
                    label: Label::Unlabeled,
                }
            }
        };
        self.handed_out += 1;
        Ok(Some(Line {
            number: self.number,
            example,
        }))
    }
}

/// Where the lines come from: read as they go (plain text, TSV) or read whole (CSV, JSON
/// Lines, Parquet).
enum Source {
    Stream(LineReader),
    Table(std::vec::IntoIter<Line>),
}

impl Source {
    fn open(path: &PathBuf, data: &DataSpec) -> Result<Self> {
        let streamed = path.as_os_str() == "-"
            || matches!(TableFormat::of(path), None | Some(TableFormat::Tsv));
        if streamed {
            return Ok(Self::Stream(LineReader::open(path, data)?));
        }
        let Some((text, pair)) = data.text_columns()? else {
            bail!(
                "{}: which column holds the text? give --text-column",
                path.display()
            );
        };
        let rows = kd_data::read_texts(path, &text, pair.as_deref())?;
        let lines: Vec<Line> = rows
            .into_iter()
            .map(|(number, text, pair)| Line {
                number,
                example: Example {
                    text,
                    pair,
                    label: Label::Unlabeled,
                },
            })
            .collect();
        Ok(Self::Table(lines.into_iter()))
    }

    fn next(&mut self) -> Result<Option<Line>> {
        match self {
            Self::Stream(reader) => reader.next(),
            Self::Table(lines) => Ok(lines.next()),
        }
    }

    /// The lines before the one that failed, for the message (a table fails before any).
    fn done(&self) -> usize {
        match self {
            Self::Stream(reader) => reader.handed_out,
            Self::Table(_) => 0,
        }
    }
}

/// Predicts the texts or the input file of `args` into `--output` or standard output.
pub fn run(args: PredictArgs) -> Result<()> {
    args.data.ensure_no_training_options("kd predict")?;
    let device = args.device.select()?;
    let model = TaskModel::open(&args.model, args.data.max_seq_len, &device)?;
    // The input is opened (and its header checked, a table read whole) before the output
    // is created.
    let reader = args
        .input
        .as_ref()
        .map(|input| Source::open(input, &args.data))
        .transpose()?;
    let with_line_numbers = reader.is_some();
    let mut out = match &args.output {
        Some(path) => {
            if path.exists() && !args.force {
                bail!("{} exists; pass --force to replace it", path.display());
            }
            match TableFormat::of(path) {
                Some(TableFormat::Parquet) => Sink::Parquet(Box::new(ParquetSink::create(
                    path,
                    &model,
                    with_line_numbers,
                )?)),
                _ => {
                    let file = File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    Sink::Json(Box::new(BufWriter::new(file)))
                }
            }
        }
        None => Sink::Json(Box::new(BufWriter::new(std::io::stdout().lock()))),
    };
    let Some(mut reader) = reader else {
        let lines: Vec<Line> = args
            .texts
            .iter()
            .enumerate()
            .map(|(index, text)| Line {
                number: index + 1,
                example: unlabeled(text),
            })
            .collect();
        out.write(&model, &lines, args.batch_size, with_line_numbers)?;
        return out.finish();
    };
    let started = Instant::now();
    let progress = Progress::unbounded("predicting");
    let mut chunk = Vec::with_capacity(CHUNK_LINES);
    let mut written = 0;
    let mut flush = |chunk: &mut Vec<Line>, out: &mut Sink| -> Result<()> {
        out.write(&model, chunk, args.batch_size, with_line_numbers)?;
        progress.advance(chunk.len() as u64, "lines".into());
        written += chunk.len();
        chunk.clear();
        Ok(())
    };
    loop {
        match reader.next() {
            Ok(Some(line)) => {
                chunk.push(line);
                if chunk.len() == CHUNK_LINES {
                    flush(&mut chunk, &mut out)?;
                }
            }
            Ok(None) => break,
            Err(error) => {
                flush(&mut chunk, &mut out)?;
                out.finish()?;
                return Err(error.context(format!(
                    "stopped after writing the predictions of the {} lines before",
                    reader.done()
                )));
            }
        }
    }
    flush(&mut chunk, &mut out)?;
    out.finish()?;
    progress.finish();
    eprintln!(
        "{written} predictions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A text to predict; a tab separates a sentence pair.
pub fn unlabeled(text: &str) -> Example {
    let (text, pair) = match text.split_once('\t') {
        Some((text, pair)) => (text, Some(pair.to_string())),
        None => (text, None),
    };
    Example {
        text: text.to_string(),
        pair,
        label: Label::Unlabeled,
    }
}

/// Where predictions go.
enum Sink {
    /// A JSON object a line.
    Json(Box<dyn Write>),
    Parquet(Box<ParquetSink>),
}

impl Sink {
    /// Predicts `lines` (batched by length) and writes them in their order.
    fn write(
        &mut self,
        model: &TaskModel,
        lines: &[Line],
        batch_size: usize,
        with_line_numbers: bool,
    ) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let examples: Vec<Example> = lines.iter().map(|line| line.example.clone()).collect();
        let logits = logit_rows(model, &examples, batch_size)?;
        match self {
            Self::Json(out) => write_json(model, lines, &logits, with_line_numbers, out),
            Self::Parquet(sink) => sink.write(model, lines, &logits),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Self::Json(mut out) => out.flush().context("cannot write the predictions"),
            Self::Parquet(sink) => sink.finish(),
        }
    }
}

/// One JSON object a line: the line number (when read from a file), the text (and pair), then
/// the label and the probabilities by label, or the score.
fn write_json(
    model: &TaskModel,
    lines: &[Line],
    logits: &[Vec<f32>],
    with_line_numbers: bool,
    out: &mut dyn Write,
) -> Result<()> {
    for (line, row) in lines.iter().zip(logits) {
        let mut output = serde_json::Map::new();
        if with_line_numbers {
            output.insert("line".into(), line.number.into());
        }
        output.extend(answer(model, &line.example, row));
        serde_json::to_writer(&mut *out, &output)?;
        out.write_all(b"\n")?;
    }
    out.flush().context("cannot write the predictions")?;
    Ok(())
}

/// `model`'s answers to `examples` (batched by length, `batch_size` at a time), in their
/// order: each the text (and pair), then the label and the probabilities by label, or the
/// score.
pub fn predict(
    model: &TaskModel,
    examples: &[Example],
    batch_size: usize,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let logits = logit_rows(model, examples, batch_size)?;
    Ok(examples
        .iter()
        .zip(&logits)
        .map(|(example, row)| answer(model, example, row))
        .collect())
}

/// `model`'s logits for `examples` (batched by length), a row an example in their order; none
/// for none.
fn logit_rows(model: &TaskModel, examples: &[Example], batch_size: usize) -> Result<Vec<Vec<f32>>> {
    if examples.is_empty() {
        return Ok(Vec::new());
    }
    Ok(model
        .logits(&model.encode(examples)?, batch_size, None)?
        .to_vec2::<f32>()?)
}

/// One example's answer from its logits `row`.
fn answer(
    model: &TaskModel,
    example: &Example,
    row: &[f32],
) -> serde_json::Map<String, serde_json::Value> {
    let mut output = serde_json::Map::new();
    output.insert("text".into(), example.text.clone().into());
    if let Some(pair) = &example.pair {
        output.insert("pair".into(), pair.clone().into());
    }
    match model.task_kind() {
        TaskKind::Regression => {
            output.insert("score".into(), row[0].into());
        }
        TaskKind::Classification => {
            let probabilities = softmax(row);
            let best = argmax(&probabilities);
            let by_label: serde_json::Map<String, serde_json::Value> = model
                .labels
                .iter()
                .zip(&probabilities)
                .map(|(label, p)| (label.clone(), (*p).into()))
                .collect();
            output.insert("label".into(), model.labels[best].clone().into());
            output.insert("probabilities".into(), by_label.into());
        }
    }
    output
}

/// Predictions as a Parquet file, a row group a chunk, written under a temporary name and
/// moved into place when finished.
struct ParquetSink {
    writer: parquet::arrow::ArrowWriter<File>,
    schema: SchemaRef,
    tmp: PathBuf,
    path: PathBuf,
}

impl ParquetSink {
    fn create(path: &Path, model: &TaskModel, with_line_numbers: bool) -> Result<Self> {
        let mut fields = Vec::new();
        if with_line_numbers {
            fields.push(Field::new("line", DataType::UInt64, false));
        }
        fields.push(Field::new("text", DataType::Utf8, false));
        fields.push(Field::new("pair", DataType::Utf8, true));
        match model.task_kind() {
            TaskKind::Regression => fields.push(Field::new("score", DataType::Float32, false)),
            TaskKind::Classification => {
                let by_label: Vec<Field> = model
                    .labels
                    .iter()
                    .map(|label| Field::new(label, DataType::Float32, false))
                    .collect();
                fields.push(Field::new("label", DataType::Utf8, false));
                fields.push(Field::new(
                    "probabilities",
                    DataType::Struct(by_label.into()),
                    false,
                ));
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let file = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)?;
        Ok(Self {
            writer,
            schema,
            tmp,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, model: &TaskModel, lines: &[Line], logits: &[Vec<f32>]) -> Result<()> {
        let mut columns: Vec<ArrayRef> = Vec::new();
        if self.schema.field_with_name("line").is_ok() {
            let numbers = lines.iter().map(|line| line.number as u64);
            columns.push(Arc::new(UInt64Array::from_iter_values(numbers)));
        }
        let texts = lines.iter().map(|line| Some(line.example.text.as_str()));
        columns.push(Arc::new(StringArray::from_iter(texts)));
        let pairs = lines.iter().map(|line| line.example.pair.as_deref());
        columns.push(Arc::new(StringArray::from_iter(pairs)));
        match model.task_kind() {
            TaskKind::Regression => {
                let scores = logits.iter().map(|row| row[0]);
                columns.push(Arc::new(Float32Array::from_iter_values(scores)));
            }
            TaskKind::Classification => {
                let probabilities: Vec<Vec<f32>> = logits.iter().map(|row| softmax(row)).collect();
                let labels = probabilities
                    .iter()
                    .map(|p| Some(model.labels[argmax(p)].as_str()));
                columns.push(Arc::new(StringArray::from_iter(labels)));
                let DataType::Struct(fields) =
                    self.schema.field_with_name("probabilities")?.data_type()
                else {
                    unreachable!("probabilities is a struct column");
                };
                let by_label: Vec<ArrayRef> = (0..model.labels.len())
                    .map(|class| {
                        let values = probabilities.iter().map(|p| p[class]);
                        Arc::new(Float32Array::from_iter_values(values)) as ArrayRef
                    })
                    .collect();
                columns.push(Arc::new(StructArray::try_new(
                    fields.clone(),
                    by_label,
                    None,
                )?));
            }
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch)?;
        // A row group a chunk: what came before a bad line is in the file.
        self.writer.flush()?;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.writer
            .close()
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot move {} into place", self.path.display()))
    }
}

/// Probabilities from logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(path: &PathBuf, data: &DataSpec) -> Vec<(usize, String)> {
        let mut source = Source::open(path, data).unwrap();
        let mut lines = Vec::new();
        while let Some(line) = source.next().unwrap() {
            lines.push((line.number, line.example.text));
        }
        lines
    }

    /// Streamed input reads as tables do: the byte-order mark dropped, blank lines passed over
    /// (each text keeping its line number), and a bad line's count of lines before it right.
    #[test]
    fn streamed_input_drops_the_byte_order_mark_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("texts.txt");
        std::fs::write(&plain, "\u{feff}a fine film\n\n  \nnot good\n\n").unwrap();
        let expected = [(1, "a fine film".to_string()), (4, "not good".to_string())];
        assert_eq!(texts(&plain, &DataSpec::default()), expected);

        let table = dir.path().join("texts.tsv");
        std::fs::write(
            &table,
            "\u{feff}id\treview\n1\ta fine film\n\n2\tnot good\n3\n",
        )
        .unwrap();
        let data = DataSpec {
            text_column: Some("review".into()),
            ..DataSpec::default()
        };
        let mut source = Source::open(&table, &data).unwrap();
        assert_eq!(source.next().unwrap().unwrap().number, 2);
        assert_eq!(source.next().unwrap().unwrap().number, 4);
        let error = source.next().err().unwrap().to_string();
        assert!(
            error.ends_with("texts.tsv:5: expected 2 tab-separated fields (id, review), found 1"),
            "{error}"
        );
        assert_eq!(source.done(), 2);
    }
}
