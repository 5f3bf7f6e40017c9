//! Charts and reports of kd's runs, drawn with plotters as PNG and SVG: labelled points,
//! curves against a shared axis, panels and heatmaps ([`charts`]), and the learning curves of
//! a run's logs ([`learning_curves`]).

pub mod charts;
mod curves;

pub use curves::learning_curves;
