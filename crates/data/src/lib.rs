//! Task data for kd: the WordPiece tokenizer, GLUE tasks and user files (TSV, CSV, JSON Lines,
//! Parquet), batches with dynamic padding and length bucketing, the metrics GLUE reports,
//! TinyBERT-style data augmentation, unlabeled transfer sets, and packed, masked corpora for
//! general distillation; [`DataSpec`] describes a task's data for the command line and recipes
//! alike.

mod augment;
mod batch;
mod corpus;
mod example;
mod masking;
mod metrics;
mod spec;
mod stats;
mod table;
mod task;
mod tokenizer;
mod unlabeled;

pub use augment::{AugmentConfig, WordNeighbours, augment};
pub use batch::{Batch, EncodedExample, batch_plan, collate, encode_examples};
pub use corpus::{
    CorpusSource, PackedCorpus, expand_globs, for_each_chunk, hash_file, pack_corpus,
};
pub use example::{Example, Label};
pub use masking::{MaskedToken, Masking};
pub use metrics::{Metric, Predictions, evaluate};
pub use spec::DataSpec;
pub use stats::{McNemar, agreement, bootstrap_interval, mcnemar};
pub use table::{
    Format as TableFormat, TABLE_EXTENSIONS, header_column, read_texts, strip_byte_order_mark,
    tsv_fields, tsv_header,
};
pub use task::{TaskData, TaskKind, TaskSpec};
pub use tokenizer::{Encoded, TOKENIZER_FILES, TextTokenizer};
