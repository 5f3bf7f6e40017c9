//! AdamW as BERT trains with it: decoupled weight decay except on biases and layer-norm
//! parameters, global-norm gradient clipping, and a linear warmup then linear decay.
//!
//! On the CPU the update runs as one pass over plain `f32` buffers (moments included) split
//! across threads, instead of a dozen tensor operations and allocations per parameter. On any
//! other device (or with the generic kernels forced, `kd_bert::kernels`), the moments are
//! tensors beside the parameters and the same update is composed of tensor operations.

use anyhow::{Context, Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor, Var};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// A parameter's first and second moments.
enum Moments {
    /// Plain buffers, for the fused CPU update.
    Host(Vec<f32>, Vec<f32>),
    /// Tensors on the parameter's device, for the composed update.
    Device(Tensor, Tensor),
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        let fused = var.device().is_cpu() && !kd_bert::kernels::generic_forced();
        Ok(if fused {
            Self::Host(vec![0.0; var.elem_count()], vec![0.0; var.elem_count()])
        } else {
            let zeros = Tensor::zeros(var.shape(), DType::F32, var.device())?;
            Self::Device(zeros.clone(), zeros)
        })
    }
}

pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    steps: usize,
}

/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

/// `Σ x²` in f64, summed in parallel over fixed chunks and then in order: the same bits on
/// every run (a work-stealing reduction is not), so a resumed run clips as the first did.
fn sum_of_squares(values: &[f32]) -> f64 {
    /// Independent partial sums: one accumulator is a chain of dependent additions.
    const LANES: usize = 8;
    let partial: Vec<f64> = values
        .par_chunks(CHUNK)
        .map(|chunk| {
            kd_bert::vectorised(
                #[inline(always)]
                || {
                    let mut lanes = [0f64; LANES];
                    let groups = chunk.chunks_exact(LANES);
                    let rest = groups.remainder();
                    for group in groups {
                        for (lane, &x) in lanes.iter_mut().zip(group) {
                            *lane += (x as f64) * (x as f64);
                        }
                    }
                    let tail: f64 = rest.iter().map(|&x| (x as f64) * (x as f64)).sum();
                    lanes.iter().sum::<f64>() + tail
                },
            )
        })
        .collect();
    partial.iter().sum()
}

/// Whether a parameter takes weight decay: BERT exempts biases and layer norms.
fn takes_weight_decay(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("LayerNorm"))
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                Ok(Slot {
                    decay: takes_weight_decay(&name),
                    moments: Moments::zeros(&var)?,
                    name,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            slots,
            config,
            steps: 0,
        })
    }

    /// Applies one update at learning rate `lr` and returns the gradient norm before
    /// clipping. Parameters without a gradient are left as they are.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64> {
        let gradients = self
            .slots
            .iter()
            .map(|slot| {
                grads
                    .get(slot.var.as_tensor())
                    .map(Tensor::contiguous)
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut norm = 0.0;
        // Off the CPU, one sum per gradient, all read back at once.
        let mut sums = Vec::new();
        for (slot, gradient) in self.slots.iter().zip(&gradients) {
            let Some(gradient) = gradient else { continue };
            match slot.moments {
                Moments::Host(..) => {
                    let (storage, layout) = gradient.storage_and_layout();
                    let Storage::Cpu(storage) = &*storage else {
                        bail!("AdamW: {} has its gradient off the CPU", slot.name)
                    };
                    norm += sum_of_squares(kd_bert::ops::f32_slice(storage, layout, "AdamW")?);
                }
                Moments::Device(..) => sums.push(gradient.sqr()?.sum_all()?),
            }
        }
        if !sums.is_empty() {
            let sums = Tensor::stack(&sums, 0)?.to_dtype(DType::F64)?;
            norm += sums.to_vec1::<f64>()?.iter().sum::<f64>();
        }
        let norm = f64::sqrt(norm);
        if !norm.is_finite() {
            bail!("gradient norm is {norm}");
        }
        let clip = match self.config.max_grad_norm {
            Some(max) if norm > max => (max / (norm + 1e-6)) as f32,
            _ => 1.0,
        };
        self.steps += 1;
        let AdamWConfig {
            beta1,
            beta2,
            weight_decay,
            ..
        } = self.config;
        let step = self.steps as i32;
        let m_scale = (1.0 / (1.0 - beta1.powi(step))) as f32;
        let v_scale = (1.0 / (1.0 - beta2.powi(step))) as f32;
        for (slot, gradient) in self.slots.iter_mut().zip(gradients) {
            let Some(gradient) = gradient else { continue };
            let shrink = if slot.decay {
                (1.0 - lr * weight_decay) as f32
            } else {
                1.0
            };
            let update = Update {
                moments: RefCell::new((&mut [], &mut [])),
                clip,
                beta1: beta1 as f32,
                beta2: beta2 as f32,
                m_scale,
                v_scale,
                eps: self.config.eps as f32,
                shrink,
                lr: lr as f32,
            };
            match &mut slot.moments {
                Moments::Host(first, second) => {
                    update
                        .moments
                        .replace((first.as_mut_slice(), second.as_mut_slice()));
                    slot.var.inplace_op2(&gradient, &update)?;
                }
                Moments::Device(first, second) => {
                    update.composed(&slot.var, &gradient, first, second)?;
                }
            }
        }
        Ok(norm)
    }
}

impl Update<'_> {
    /// The update of [`Update::cpu_fwd`] in tensor operations, on any device.
    fn composed(&self, theta: &Var, grad: &Tensor, m: &mut Tensor, v: &mut Tensor) -> Result<()> {
        let grad = grad.to_dtype(DType::F32)?.affine(self.clip as f64, 0.0)?;
        let (b1, b2) = (self.beta1 as f64, self.beta2 as f64);
        *m = ((&*m * b1)? + (&grad * (1.0 - b1))?)?;
        *v = ((&*v * b2)? + (grad.sqr()? * (1.0 - b2))?)?;
        let denominator = ((&*v * self.v_scale as f64)?.sqrt()? + self.eps as f64)?;
        let update = ((&*m * self.m_scale as f64)? / denominator)?;
        let shrunk = (theta.as_tensor() * self.shrink as f64)?;
        theta.set(&(shrunk - (update * self.lr as f64)?)?)?;
        Ok(())
    }
}

/// One parameter's AdamW update, written into the parameter's own storage: copying it out and
/// back in (as `Var::set` needs) cost three passes over every parameter a step.
struct Update<'a> {
    /// The first and second moments, updated as the parameter is.
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
    clip: f32,
    beta1: f32,
    beta2: f32,
    /// The bias corrections, `1 / (1 - beta^step)`.
    m_scale: f32,
    v_scale: f32,
    eps: f32,
    /// `1 - lr * weight_decay`, or 1 without decay.
    shrink: f32,
    lr: f32,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "kd-adamw"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        theta_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        let theta = kd_bert::ops::f32_slice_mut(theta, theta_layout, self.name())?;
        let grad = kd_bert::ops::f32_slice(grad, grad_layout, self.name())?;
        let (m, v) = &mut *self.moments.borrow_mut();
        if [grad.len(), m.len(), v.len()] != [theta.len(); 3] {
            candle_core::bail!(
                "kd-adamw: {} gradients for {} parameters",
                grad.len(),
                theta.len()
            );
        }
        let &Self {
            clip,
            beta1: b1,
            beta2: b2,
            m_scale,
            v_scale,
            eps,
            shrink,
            lr,
            ..
        } = self;
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(((theta, m), v), g)| {
                kd_bert::vectorised(
                    #[inline(always)]
                    || {
                        let elements = theta.iter_mut().zip(m).zip(v).zip(g);
                        for (((theta, m), v), &g) in elements {
                            let g = g * clip;
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * g * g;
                            let update = (*m * m_scale) / ((*v * v_scale).sqrt() + eps);
                            *theta = *theta * shrink - lr * update;
                        }
                    },
                )
            });
        Ok(())
    }
}

impl AdamW {
    /// Writes the moments and the step count, atomically, so that training can resume.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(2 * self.slots.len());
        for slot in &self.slots {
            let shape = slot.var.shape().clone();
            let (first, second) = match &slot.moments {
                Moments::Host(first, second) => (
                    Tensor::from_slice(first, shape.clone(), &Device::Cpu)?,
                    Tensor::from_slice(second, shape, &Device::Cpu)?,
                ),
                Moments::Device(first, second) => (
                    first.to_device(&Device::Cpu)?,
                    second.to_device(&Device::Cpu)?,
                ),
            };
            for (kind, tensor) in [("m", first), ("v", second)] {
                tensors.push((format!("{kind}.{}", slot.name), tensor));
            }
        }
        let metadata = HashMap::from([("steps".to_string(), self.steps.to_string())]);
        kd_bert::write_checked(path, &tensors, metadata)
    }

    /// Restores what [`AdamW::save`] wrote for the same parameters.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let file = kd_bert::read_checked(path, CHECKPOINT_REMEDY)?;
        let steps: usize = file
            .metadata
            .get("steps")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{} has no step count", path.display()))?;
        let tensors = file.tensors;
        for slot in &mut self.slots {
            let moment = |kind| {
                let name = format!("{kind}.{}", slot.name);
                let tensor = tensors
                    .get(&name)
                    .with_context(|| format!("{} lacks {name}", path.display()))?;
                if tensor.dims() != slot.var.dims() {
                    bail!("{name} in {} has the wrong size", path.display());
                }
                Ok(tensor)
            };
            let (first, second) = (moment("m")?, moment("v")?);
            slot.moments = match slot.moments {
                Moments::Host(..) => Moments::Host(
                    first.flatten_all()?.to_vec1()?,
                    second.flatten_all()?.to_vec1()?,
                ),
                Moments::Device(..) => Moments::Device(
                    first.to_device(slot.var.device())?,
                    second.to_device(slot.var.device())?,
                ),
            };
        }
        self.steps = steps;
        Ok(())
    }
}

/// What to do about a damaged checkpoint file.
pub(crate) const CHECKPOINT_REMEDY: &str =
    "the run cannot resume from it; start it again with --force (or restore the file)";

/// Linear warmup from 0 to the peak rate, then linear decay to 0 at the last step.
#[derive(Debug, Clone, Copy)]
pub struct LinearSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LinearSchedule {
    /// The rate for the update numbered `step` (from 0).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let remaining = self.total_steps.saturating_sub(step) as f64;
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        self.peak * (remaining / decay_steps).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;

    /// A small quadratic problem: loss = sum((w * x - 1)^2).
    fn loss(w: &Var) -> Tensor {
        let x = Tensor::new(&[0.5f32, -1.5, 2.0, 3.0], &Device::Cpu).unwrap();
        (w.as_tensor() * x)
            .unwrap()
            .affine(1.0, -1.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    }

    fn start() -> Var {
        Var::from_tensor(&Tensor::new(&[0.3f32, -0.2, 0.1, 0.05], &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn matches_candle_adamw_without_clipping() {
        let (ours, reference) = (start(), start());
        let config = AdamWConfig {
            max_grad_norm: None,
            ..AdamWConfig::default()
        };
        let mut adamw = AdamW::new(vec![("w.weight".into(), ours.clone())], config).unwrap();
        let mut candle = candle_nn::AdamW::new(
            vec![reference.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.05,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..20 {
            adamw.step(&loss(&ours).backward().unwrap(), 0.05).unwrap();
            candle.step(&loss(&reference).backward().unwrap()).unwrap();
        }
        let diff = (ours.as_tensor() - reference.as_tensor())
            .unwrap()
            .abs()
            .unwrap();
        let max_diff = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(
            max_diff < 2e-5,
            "max diff {max_diff}: {ours} vs {reference}"
        );
        assert!(
            loss(&ours).to_scalar::<f32>().unwrap() < loss(&start()).to_scalar::<f32>().unwrap()
        );
    }

    #[test]
    fn biases_take_no_weight_decay_and_clipping_bounds_the_first_step() {
        // Adam's first update is lr * sign(g) (up to eps), plus decay for weights only.
        let (weight, bias) = (start(), start());
        let config = AdamWConfig {
            max_grad_norm: None,
            ..AdamWConfig::default()
        };
        let mut adamw = AdamW::new(
            vec![
                ("l.weight".into(), weight.clone()),
                ("l.bias".into(), bias.clone()),
            ],
            config,
        )
        .unwrap();
        let total = (loss(&weight) + loss(&bias)).unwrap();
        let gradient = total
            .backward()
            .unwrap()
            .get(weight.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        adamw.step(&total.backward().unwrap(), 0.1).unwrap();
        let initial = start().to_vec1::<f32>().unwrap();
        for i in 0..4 {
            let step = 0.1 * gradient[i].signum();
            let decayed = initial[i] * (1.0 - 0.1 * 0.01) - step;
            assert!((weight.to_vec1::<f32>().unwrap()[i] - decayed).abs() < 1e-6);
            assert!((bias.to_vec1::<f32>().unwrap()[i] - (initial[i] - step)).abs() < 1e-6);
        }
    }

    #[test]
    fn clipping_rescales_the_gradient_to_the_maximum_norm() {
        // Clipped: a gradient 1e6 times too large. Reference: the gradient scaled by hand to the
        // maximum norm, 100 (far above the ordinary gradients' norm, about 6).
        let (clipped, reference) = (start(), start());
        let clip_at_100 = AdamWConfig {
            max_grad_norm: Some(100.0),
            ..AdamWConfig::default()
        };
        let mut with_clip = AdamW::new(vec![("w".into(), clipped.clone())], clip_at_100).unwrap();
        let no_clip = AdamWConfig {
            max_grad_norm: None,
            ..AdamWConfig::default()
        };
        let mut by_hand = AdamW::new(vec![("w".into(), reference.clone())], no_clip).unwrap();
        let grads = loss(&reference).backward().unwrap();
        let norm = grads
            .get(reference.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let norm = norm.to_scalar::<f32>().unwrap().sqrt() as f64;
        let reported = with_clip
            .step(&(loss(&clipped) * 1e6).unwrap().backward().unwrap(), 0.01)
            .unwrap();
        assert!((reported / 1e6 - norm).abs() < 1e-3 * norm);
        by_hand
            .step(
                &(loss(&reference) * (100.0 / norm))
                    .unwrap()
                    .backward()
                    .unwrap(),
                0.01,
            )
            .unwrap();
        // A second, ordinary step shows the moments hold the clipped gradient.
        with_clip
            .step(&loss(&clipped).backward().unwrap(), 0.01)
            .unwrap();
        by_hand
            .step(&loss(&reference).backward().unwrap(), 0.01)
            .unwrap();
        let diff = (clipped.as_tensor() - reference.as_tensor())
            .unwrap()
            .abs()
            .unwrap();
        let max_diff = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max_diff < 1e-6, "{max_diff}: {clipped} vs {reference}");
        assert_eq!(clipped.dtype(), DType::F32);
    }

    #[test]
    fn saved_state_resumes_exactly() {
        let config = AdamWConfig::default();
        let (resumed, straight) = (start(), start());
        let mut first = AdamW::new(vec![("w".into(), resumed.clone())], config).unwrap();
        let mut uninterrupted = AdamW::new(vec![("w".into(), straight.clone())], config).unwrap();
        for _ in 0..3 {
            first
                .step(&loss(&resumed).backward().unwrap(), 0.05)
                .unwrap();
            uninterrupted
                .step(&loss(&straight).backward().unwrap(), 0.05)
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        first
            .save(&dir.path().join("optimizer.safetensors"))
            .unwrap();
        let mut second = AdamW::new(vec![("w".into(), resumed.clone())], config).unwrap();
        second
            .load(&dir.path().join("optimizer.safetensors"))
            .unwrap();
        for _ in 0..3 {
            second
                .step(&loss(&resumed).backward().unwrap(), 0.05)
                .unwrap();
            uninterrupted
                .step(&loss(&straight).backward().unwrap(), 0.05)
                .unwrap();
        }
        assert_eq!(
            resumed.to_vec1::<f32>().unwrap(),
            straight.to_vec1::<f32>().unwrap()
        );
        let mut other = AdamW::new(vec![("x".into(), start())], config).unwrap();
        assert!(
            other
                .load(&dir.path().join("optimizer.safetensors"))
                .is_err()
        );
    }

    /// The composed update (off the CPU, or forced) against the fused one: weight decay on
    /// one parameter and not the other, clipping on every step, and a checkpoint of one read
    /// by the other.
    #[test]
    fn the_composed_update_follows_the_fused_one_and_shares_its_checkpoints() {
        let config = AdamWConfig {
            max_grad_norm: Some(0.5),
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let pair = || {
            let bias = Var::from_tensor(&Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap());
            vec![
                ("w.weight".to_string(), start()),
                ("b.bias".to_string(), bias.unwrap()),
            ]
        };
        let total = |vars: &[(String, Var)]| {
            let bias = vars[1].1.as_tensor().sqr().unwrap().sum_all().unwrap();
            (loss(&vars[0].1) * 3.0).unwrap().add(&bias).unwrap()
        };
        let values = |vars: &[(String, Var)]| -> Vec<f32> {
            let values = vars
                .iter()
                .map(|(_, var)| var.as_tensor().flatten_all().unwrap());
            values.flat_map(|v| v.to_vec1::<f32>().unwrap()).collect()
        };
        let (fused_vars, composed_vars) = (pair(), pair());
        let mut fused = AdamW::new(fused_vars.clone(), config).unwrap();
        let mut composed =
            kd_bert::kernels::force_generic(|| AdamW::new(composed_vars.clone(), config)).unwrap();
        assert!(matches!(composed.slots[0].moments, Moments::Device(..)));
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("optimizer.safetensors");
        for step in 0..6 {
            let fused_norm = fused
                .step(&total(&fused_vars).backward().unwrap(), 0.05)
                .unwrap();
            let grads = total(&composed_vars).backward().unwrap();
            let composed_norm = composed.step(&grads, 0.05).unwrap();
            assert!(
                (fused_norm - composed_norm).abs() <= 1e-6 * fused_norm,
                "step {step}"
            );
            assert!(fused_norm > 0.5, "step {step}: no clipping ({fused_norm})");
            for (a, b) in values(&fused_vars).into_iter().zip(values(&composed_vars)) {
                assert!((a - b).abs() <= 1e-6, "step {step}: {a} against {b}");
            }
            // Halfway, each continues from the other's checkpoint.
            if step == 2 {
                composed.save(&checkpoint).unwrap();
                fused.save(&dir.path().join("fused.safetensors")).unwrap();
                fused.load(&checkpoint).unwrap();
                composed
                    .load(&dir.path().join("fused.safetensors"))
                    .unwrap();
            }
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let schedule = LinearSchedule {
            peak: 1.0,
            warmup_steps: 4,
            total_steps: 12,
        };
        let rates: Vec<f64> = (0..12).map(|s| schedule.lr(s)).collect();
        assert_eq!(&rates[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert_eq!(rates[4], 1.0);
        assert_eq!(rates[8], 0.5);
        assert_eq!(rates[11], 0.125);
    }
}
