//! One example of a task: its text (and pair) and its label, which metrics, batches and
//! corpora share with the task files.

/// What an example is labelled with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    /// A class, by its index in the task's labels.
    Class(usize),
    /// A real-valued score (a regression task).
    Score(f32),
    /// Transfer-set text: the teacher's outputs are its only targets.
    Unlabeled,
}

/// A text (or sentence pair) and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub pair: Option<String>,
    pub label: Label,
}
