//! A network's state as named tensors in `torch.nn.Sequential` names: what `export` writes
//! and `--weights` reads. Module i of the layer list owns `{i}.weight`, `{i}.bias`; inside
//! residual block i, module j owns `{i}.{j}.weight`. A BatchNorm also owns `running_mean`
//! and `running_var` (and PyTorch's `num_batches_tracked`, which is read and ignored).

use std::collections::BTreeMap;

use crate::net::Shape;
use crate::{Arch, ModelError, Stage};

/// One named tensor of a network's state.
#[derive(Clone, Debug, PartialEq)]
pub struct StateEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// A parameter of θ; otherwise a fixed tensor of the architecture (a frozen layer's
    /// weights, a BatchNorm's running statistics).
    pub trained: bool,
    /// The layout expected, for error messages.
    pub layout: &'static str,
}

/// A tensor read from a file, converted to f64.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

const LINEAR: &str = "torch.nn.Linear weight [out, in]";
const CONV: &str = "torch.nn.Conv2d weight [out, in, kh, kw]";
const VECTOR: &str = "a vector [features or channels]";

impl Arch {
    /// The module name of each stage (`None` for the brackets of a residual block): `i` at
    /// the top, `i.j` inside residual block i, `i.shortcut.j` in its shortcut.
    pub fn module_names(&self) -> Vec<Option<String>> {
        // Per nesting level: the name's prefix, and the index of the next module.
        let mut path = vec![(String::new(), 0usize)];
        self.stages
            .iter()
            .map(|stage| {
                let (prefix, next) = path.last_mut().expect("validated");
                match stage {
                    Stage::SaveSkip => {
                        let block = format!("{prefix}{next}.");
                        path.push((block, 0));
                        None
                    }
                    Stage::SwapSkip => {
                        *prefix = format!("{prefix}shortcut.");
                        *next = 0;
                        None
                    }
                    Stage::AddSkip => {
                        path.pop();
                        path.last_mut().expect("validated").1 += 1;
                        None
                    }
                    _ => {
                        let name = format!("{prefix}{next}");
                        *next += 1;
                        Some(name)
                    }
                }
            })
            .collect()
    }

    /// Every named tensor of the state, parameters of θ in flat-vector order.
    pub fn state_layout(&self) -> Vec<StateEntry> {
        let mut out = Vec::new();
        let stages = self.stages.iter().zip(self.stage_inputs());
        for ((stage, shape), name) in stages.zip(self.module_names()) {
            let mut push = |suffix: &str, shape: Vec<usize>, trained: bool, layout| {
                out.push(StateEntry {
                    name: format!("{}.{suffix}", name.as_deref().unwrap_or_default()),
                    shape,
                    trained,
                    layout,
                })
            };
            match (stage, shape) {
                (Stage::Dense { out: o, bias }, Shape::Flat(d)) => {
                    push("weight", vec![*o, d], true, LINEAR);
                    if *bias {
                        push("bias", vec![*o], true, VECTOR);
                    }
                }
                (
                    Stage::Conv {
                        out: o,
                        kernel,
                        bias,
                        ..
                    },
                    Shape::Image(c, _, _),
                ) => {
                    push("weight", vec![*o, c, *kernel, *kernel], true, CONV);
                    if *bias {
                        push("bias", vec![*o], true, VECTOR);
                    }
                }
                (Stage::Hadamard, Shape::Flat(d)) => push("weight", vec![d], true, VECTOR),
                (Stage::FixedDense { out: o, weights }, _) => {
                    push("weight", vec![*o, weights.len() / o], false, LINEAR)
                }
                (Stage::BatchNorm { frozen, .. }, s) => {
                    let c = s.channels();
                    push("weight", vec![c], frozen.is_none(), VECTOR);
                    push("bias", vec![c], frozen.is_none(), VECTOR);
                    push("running_mean", vec![c], false, VECTOR);
                    push("running_var", vec![c], false, VECTOR);
                }
                _ => {}
            }
        }
        out
    }

    /// The state's tensors and their values: parameters from `theta` (flat-vector order),
    /// fixed tensors from the architecture. [`Arch::load_state`] reads them back.
    pub fn state_values(&self, theta: &[f64]) -> Vec<(StateEntry, Vec<f64>)> {
        let mut fixed: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut arch = self.clone();
        for (stage, name) in arch.stages.iter_mut().zip(self.module_names()) {
            for (suffix, values) in fixed_slots(stage) {
                let name = format!("{}.{suffix}", name.as_deref().unwrap_or_default());
                fixed.insert(name, values.iter().map(|&x| x as f64).collect());
            }
        }
        let mut off = 0;
        self.state_layout()
            .into_iter()
            .map(|e| {
                let values = if e.trained {
                    let len: usize = e.shape.iter().product();
                    off += len;
                    theta[off - len..off].to_vec()
                } else {
                    fixed
                        .remove(&e.name)
                        .expect("a fixed tensor of the architecture")
                };
                (e, values)
            })
            .collect()
    }

    /// Reads a state: θ in flat-vector order, and this architecture with its fixed tensors
    /// replaced by the file's. Every tensor must be present with its shape, and the file must
    /// hold nothing else (`num_batches_tracked` of a BatchNorm aside); each problem is a
    /// one-line error naming the tensor, both shapes and the layout expected.
    pub fn load_state(
        &self,
        mut tensors: BTreeMap<String, NamedTensor>,
    ) -> Result<(Arch, Vec<f64>), ModelError> {
        let err = |m: String| Err(ModelError::Weights(m));
        let layout = self.state_layout();
        let mut theta = Vec::with_capacity(self.num_params());
        let mut fixed = BTreeMap::new();
        for e in &layout {
            let Some(t) = tensors.remove(&e.name) else {
                return err(format!(
                    "tensor `{}` is missing; the model expects shape {:?} ({}); map other names with --name-map",
                    e.name, e.shape, e.layout
                ));
            };
            if t.shape != e.shape {
                let reversed: Vec<usize> = e.shape.iter().rev().copied().collect();
                let swapped = e.shape.len() >= 2 && {
                    let mut s = e.shape.clone();
                    s.swap(0, 1);
                    t.shape == s
                };
                let hint = if e.shape.len() >= 2 && (t.shape == reversed || swapped) {
                    "; it looks transposed"
                } else {
                    ""
                };
                return err(format!(
                    "tensor `{}` has shape {:?} but the model expects {:?} ({}){hint}",
                    e.name, t.shape, e.shape, e.layout
                ));
            }
            if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
                return err(format!(
                    "tensor `{}` holds a non-finite value ({}) at flat index {i}",
                    e.name, t.values[i]
                ));
            }
            if e.name.ends_with(".running_var")
                && let Some(i) = t.values.iter().position(|v| *v < 0.0)
            {
                return err(format!(
                    "tensor `{}` holds a negative variance ({}) at index {i}",
                    e.name, t.values[i]
                ));
            }
            if e.trained {
                theta.extend(t.values);
            } else {
                fixed.insert(e.name.clone(), t.values);
            }
        }
        tensors.retain(|k, _| {
            !k.strip_suffix(".num_batches_tracked")
                .is_some_and(|m| layout.iter().any(|e| e.name == format!("{m}.running_mean")))
        });
        if !tensors.is_empty() {
            let names: Vec<&str> = tensors.keys().map(String::as_str).take(6).collect();
            return err(format!(
                "the file holds {} tensor(s) the model does not have: {}{}; check the architecture, or map names with --name-map",
                tensors.len(),
                names.join(", "),
                if tensors.len() > names.len() {
                    ", …"
                } else {
                    ""
                }
            ));
        }
        let mut arch = self.clone();
        for (stage, name) in arch.stages.iter_mut().zip(self.module_names()) {
            for (suffix, values) in fixed_slots(stage) {
                let name = format!("{}.{suffix}", name.as_deref().unwrap_or_default());
                let read = fixed.remove(&name).expect("read above");
                *values = read.into_iter().map(|x| x as f32).collect();
            }
        }
        Ok((arch, theta))
    }
}

/// The fixed tensors of a stage, by the suffix of its module's name: a fixed layer's weight,
/// a BatchNorm's running statistics, and its γ and β when frozen.
fn fixed_slots(stage: &mut Stage) -> Vec<(&'static str, &mut Vec<f32>)> {
    match stage {
        Stage::FixedDense { weights, .. } => vec![("weight", weights)],
        Stage::BatchNorm {
            mean, var, frozen, ..
        } => {
            let mut slots = vec![("running_mean", mean), ("running_var", var)];
            if let Some(a) = frozen {
                slots.push(("weight", &mut a.weight));
                slots.push(("bias", &mut a.bias));
            }
            slots
        }
        _ => Vec::new(),
    }
}
