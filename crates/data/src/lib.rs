//! Task data for kd: the WordPiece tokenizer, GLUE tasks and user TSV files, batches with
//! dynamic padding and length bucketing, the metrics GLUE reports, and TinyBERT-style data
//! augmentation.

mod augment;
mod batch;
mod metrics;
mod task;
mod tokenizer;
mod tsv;

pub use augment::{AugmentConfig, WordNeighbours, augment};
pub use batch::{Batch, EncodedExample, batch_plan, collate, encode_examples};
pub use metrics::{Metric, Predictions, evaluate};
pub use task::{Example, Label, TaskData, TaskKind, TaskSpec};
pub use tokenizer::{Encoded, TextTokenizer};
