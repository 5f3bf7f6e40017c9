//! `kd bench`'s arguments, the shapes and the cases, which the latency case reads too.

use clap::{Args, ValueEnum};
use kd_bert::Precision;
use kd_data::DataSpec;
use kd_runner::options::DeviceArg;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// small: 6 layers x 384 (12 heads), batch 32; base: 12 layers x 768, batch 8.
    #[arg(long, value_delimiter = ',', default_value = "small,base")]
    pub shapes: Vec<Shape>,
    /// `latency` needs --model and a dev set (--task or --dev and its columns).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gemm,inference,train,distill"
    )]
    pub cases: Vec<Case>,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Timed runs per case (after the warm-up runs).
    #[arg(long, default_value_t = 5, value_parser = at_least_one())]
    pub runs: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Rounds of every case, each in fresh processes. With `--pytorch`, kd and PyTorch take
    /// turns to go first, so that the machine's drift over a sitting falls on both alike,
    /// and each case ends with the median and range of its rounds' ratios.
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub rounds: usize,
    /// Threads for both kd and PyTorch.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Where both run (PyTorch on the same device).
    #[command(flatten)]
    pub device: DeviceArg,
    /// f32, or bf16: kd's products in bf16 with f32 master weights; PyTorch under autocast
    /// to bf16 (its mixed precision).
    #[arg(long, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// A Python with torch and transformers (see benches/setup.sh): also time PyTorch eager
    /// on the same cases and print the ratios.
    #[arg(long)]
    pub pytorch: Option<PathBuf>,
    /// Also write every measurement as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run the single given case in this process and print its measurement (used by `kd bench`
    /// itself to isolate each case's memory).
    #[arg(long, hide = true)]
    pub child: bool,
    /// Task models for the latency case (directories or hub ids), each timed on every dev
    /// sentence at batch 1, loaded once.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// The read case's files, the same rows in different formats (.tsv, .csv, .jsonl,
    /// .parquet).
    #[arg(long, value_delimiter = ',')]
    pub read_files: Vec<PathBuf>,
    /// The sentences of the latency case: the dev set's texts; the read case's columns.
    #[command(flatten, next_help_heading = "Data")]
    pub data: DataSpec,
}

/// A count that must be 1 or more: a median of no runs is no measurement.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Small,
    Base,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Case {
    /// The dense-layer product alone (the FFN's input projection over every token): the
    /// ceiling the whole steps are measured against.
    Gemm,
    Inference,
    Train,
    Distill,
    Latency,
    /// Reading the --read-files as a task's examples (the data flags' columns), each format
    /// against the first file.
    Read,
}
