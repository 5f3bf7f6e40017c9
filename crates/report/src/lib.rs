//! Looking at models and runs: models side by side against a reference ([`compare`]), which
//! attention heads matter ([`heads`]), pruning heads and feed-forward neurons ([`prune`]),
//! attention maps ([`attention`]), batch-1 latency ([`latency`], measured in a child process by [`child`]), and
//! charts drawn with plotters as PNG and SVG: labelled points, curves against a shared axis,
//! panels and heatmaps ([`charts`]), and the learning curves of a run's logs
//! ([`learning_curves`]).

#![warn(missing_docs)]

pub mod attention;
pub mod charts;
pub mod child;
pub mod compare;
mod curves;
pub mod heads;
pub mod latency;
pub mod prune;

pub use curves::learning_curves;
