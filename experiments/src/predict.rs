//! `kd predict`: a task model's labels (or scores) for texts given as arguments or read from a
//! file or standard input, written as JSON Lines in input order. Input is read in chunks, each
//! batched by length and written before the next is read, so a bad line stops the run with
//! its number after everything before it has been written.

use crate::cli::DeviceArg;
use anyhow::{Context, Result, bail};
use clap::Args;
use kd_data::{DataSpec, Example, Label, TaskKind, header_column};
use kd_teacher::{ModelFiles, TaskModel};
use kd_train::Progress;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

/// Lines read, predicted and written at a time.
const CHUNK_LINES: usize = 4096;

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long)]
    model: String,
    /// Read the texts from this file, or `-` for standard input.
    #[arg(long, conflicts_with = "texts")]
    input: Option<PathBuf>,
    /// Write the JSON Lines here instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Replace an existing --output file.
    #[arg(long)]
    force: bool,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArg,
    /// How to read the input: a TSV with a header, by its text column, when one is named
    /// (--text-column and --pair-column, or a GLUE --task's); otherwise one text a line, a
    /// tab separating a sentence pair.
    #[command(flatten, next_help_heading = "Data")]
    data: DataSpec,
    /// Texts to classify; a tab inside a text separates a sentence pair.
    #[arg(required_unless_present = "input")]
    texts: Vec<String>,
}

/// One input line: its number and its text (or sentence pair).
struct Line {
    number: usize,
    example: Example,
}

/// Reads lines one at a time, as plain texts or as TSV rows by column name.
struct LineReader {
    name: String,
    reader: Box<dyn BufRead>,
    number: usize,
    /// With a TSV: the number of fields, and the text and pair columns' indices.
    columns: Option<(usize, usize, Option<usize>)>,
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
            let header: Vec<&str> = header.split('\t').map(str::trim).collect();
            let find = |column: &str| header_column(&lines.name, &header, column);
            let columns = (
                header.len(),
                find(&text)?,
                pair.as_deref().map(find).transpose()?,
            );
            lines.columns = Some(columns);
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
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{}:{}: not valid UTF-8", self.name, self.number))
    }

    fn next(&mut self) -> Result<Option<Line>> {
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        let example = match self.columns {
            None => unlabeled(&line),
            Some((count, text, pair)) => {
                let fields: Vec<&str> = line.split('\t').collect();
                if fields.len() != count {
                    bail!(
                        "{}:{}: expected {count} tab-separated fields, found {}",
                        self.name,
                        self.number,
                        fields.len()
                    );
                }
                Example {
                    text: fields[text].to_string(),
                    pair: pair.map(|p| fields[p].to_string()),
                    label: Label::Unlabeled,
                }
            }
        };
        Ok(Some(Line {
            number: self.number,
            example,
        }))
    }
}

pub fn run(args: PredictArgs) -> Result<()> {
    args.data.ensure_no_training_options("kd predict")?;
    let files = ModelFiles::resolve(&args.model)?;
    let device = args.device.select()?;
    let model = TaskModel::load_for_inference(&files, args.data.max_seq_len, &device)?;
    // The input is opened (and its header checked) before the output is created.
    let reader = args
        .input
        .as_ref()
        .map(|input| LineReader::open(input, &args.data))
        .transpose()?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => {
            if path.exists() && !args.force {
                bail!("{} exists; pass --force to replace it", path.display());
            }
            let file =
                File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
            Box::new(BufWriter::new(file))
        }
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
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
        return write_predictions(&model, &lines, args.batch_size, false, &mut out);
    };
    let started = Instant::now();
    let progress = Progress::unbounded("predicting");
    let mut chunk = Vec::with_capacity(CHUNK_LINES);
    let mut written = 0;
    let mut flush = |chunk: &mut Vec<Line>| -> Result<()> {
        write_predictions(&model, chunk, args.batch_size, true, &mut out)?;
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
                    flush(&mut chunk)?;
                }
            }
            Ok(None) => break,
            Err(error) => {
                flush(&mut chunk)?;
                return Err(error.context(format!(
                    "stopped after writing the predictions of the {} lines before",
                    reader.number - 1 - usize::from(reader.columns.is_some())
                )));
            }
        }
    }
    flush(&mut chunk)?;
    progress.finish();
    eprintln!(
        "{written} predictions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A text to predict; a tab separates a sentence pair.
fn unlabeled(text: &str) -> Example {
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

/// Predicts `lines` (batched by length) and writes one JSON object each, in their order.
fn write_predictions(
    model: &TaskModel,
    lines: &[Line],
    batch_size: usize,
    with_line_numbers: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let examples: Vec<Example> = lines.iter().map(|line| line.example.clone()).collect();
    let logits = model.logits(&model.encode(&examples)?, batch_size, None)?;
    for (line, row) in lines.iter().zip(logits.to_vec2::<f32>()?) {
        let mut output = serde_json::Map::new();
        if with_line_numbers {
            output.insert("line".into(), line.number.into());
        }
        output.insert("text".into(), line.example.text.clone().into());
        if let Some(pair) = &line.example.pair {
            output.insert("pair".into(), pair.clone().into());
        }
        match model.task_kind() {
            TaskKind::Regression => {
                output.insert("score".into(), row[0].into());
            }
            TaskKind::Classification => {
                let probabilities = softmax(&row);
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
        serde_json::to_writer(&mut *out, &output)?;
        out.write_all(b"\n")?;
    }
    out.flush().context("cannot write the predictions")?;
    Ok(())
}

pub(crate) fn softmax(logits: &[f32]) -> Vec<f32> {
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
