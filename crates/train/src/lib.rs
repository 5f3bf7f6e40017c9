//! Training machinery shared by kd's fine-tuning and distillation loops: a fused AdamW with
//! weight-decay groups and gradient clipping, the linear warmup-then-decay schedule, output
//! directories that are never overwritten silently, and progress bars.

mod optim;
mod run;
mod trainer;

pub use optim::{AdamW, AdamWConfig, LinearSchedule};
pub use run::{Progress, RunDir, RunInputs};
pub use trainer::{
    Evaluation, Interrupted, Keep, StepLoss, TrainState, Trainable, TrainerConfig, format_metrics,
    interrupt_flag, interrupted_exit_code, stop_requested, train,
};
