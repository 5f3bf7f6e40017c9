//! Values that change over training: a component's weight, the temperature.

use serde::{Deserialize, Serialize};

/// A constant, or a linear ramp over training (TextBrewer's linear growth or decay of the
/// hard-label weight, a cooling temperature). In a recipe: `5.0`, or `{ from = 0.0, to = 1.0 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a number, or a table { from = .., to = .. }")]
pub enum Schedule {
    Constant(f64),
    /// `from` at the first step to `to` at the last.
    Linear {
        from: f64,
        to: f64,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Self::Constant(1.0)
    }
}

/// As a recipe gives it: `2`, or `8 to 2` for a ramp.
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Constant(value) => write!(f, "{value}"),
            Self::Linear { from, to } => write!(f, "{from} to {to}"),
        }
    }
}

impl Schedule {
    /// The value at `step` (from 0) of `total_steps`; a ramp holds its end value past the end.
    pub fn at(&self, step: usize, total_steps: usize) -> f64 {
        match *self {
            Self::Constant(value) => value,
            Self::Linear { from, to } => {
                let progress = (step as f64 / total_steps.max(1) as f64).min(1.0);
                from + (to - from) * progress
            }
        }
    }

    /// The smallest value it takes.
    pub(crate) fn min(&self) -> f64 {
        match *self {
            Self::Constant(value) => value,
            Self::Linear { from, to } => from.min(to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_move_linearly_and_hold_their_end() {
        assert_eq!(Schedule::Constant(5.0).at(3, 10), 5.0);
        let decay = Schedule::Linear { from: 1.0, to: 0.0 };
        let values: Vec<f64> = [0, 5, 10, 20].iter().map(|&s| decay.at(s, 10)).collect();
        assert_eq!(values, [1.0, 0.5, 0.0, 0.0]);
        let cooling = Schedule::Linear { from: 8.0, to: 2.0 };
        assert_eq!(cooling.at(1, 4), 6.5);
        assert_eq!(cooling.min(), 2.0);
        assert_eq!(
            (cooling.to_string(), decay.at(0, 1).to_string()),
            ("8 to 2".into(), "1".into())
        );
    }
}
