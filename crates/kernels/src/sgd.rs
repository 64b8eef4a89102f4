//! The SGD update (PyTorch's: heavy-ball momentum without dampening, coupled weight decay,
//! optional Nesterov) in one pass over host memory, split into chunks over threads.
//!
//! Each element goes through the operations of the tensor form, θ ← θ − lr·d with
//! g' = g + wd·θ, buf ← μ·buf + g' and d = buf (g' + μ·buf with Nesterov), in the same order
//! and precision, so both give the same bits.

use std::ops::{Add, Mul, Sub};

use burn::tensor::{Element, ElementConversion};
use rayon::prelude::*;

/// One step's coefficients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

/// The element types of [`sgd_update`]: f32 and f64.
pub trait Scalar:
    Element + Copy + Send + Sync + Add<Output = Self> + Mul<Output = Self> + Sub<Output = Self>
{
}
impl Scalar for f32 {}
impl Scalar for f64 {}

#[derive(Clone, Copy)]
struct Coefficients<E> {
    wd: E,
    mu: E,
    lr: E,
}

/// Updates θ (`t`) in place from its gradient `g`, and the momentum buffer `b` when there is
/// one (`b` is then updated too).
///
/// # Panics
/// If the slices' lengths differ.
pub fn sgd_update<E: Scalar>(t: &mut [E], g: &[E], b: Option<&mut [E]>, step: SgdStep) {
    const CHUNK: usize = 1 << 14;
    assert_eq!(t.len(), g.len(), "θ and its gradient have the same length");
    let k = Coefficients {
        wd: step.weight_decay.elem::<E>(),
        mu: step.momentum.elem::<E>(),
        lr: step.lr.elem::<E>(),
    };
    let (t, g) = (t.par_chunks_mut(CHUNK), g.par_chunks(CHUNK));
    match (b, step.weight_decay > 0.0, step.nesterov) {
        (None, false, _) => t.zip(g).for_each(|(t, g)| plain::<E, false>(t, g, k)),
        (None, true, _) => t.zip(g).for_each(|(t, g)| plain::<E, true>(t, g, k)),
        (Some(b), decay, nesterov) => {
            let tgb = t.zip(g).zip(b.par_chunks_mut(CHUNK));
            match (decay, nesterov) {
                (false, false) => tgb.for_each(|((t, g), b)| heavy::<E, false, false>(t, g, b, k)),
                (false, true) => tgb.for_each(|((t, g), b)| heavy::<E, false, true>(t, g, b, k)),
                (true, false) => tgb.for_each(|((t, g), b)| heavy::<E, true, false>(t, g, b, k)),
                (true, true) => tgb.for_each(|((t, g), b)| heavy::<E, true, true>(t, g, b, k)),
            }
        }
    }
}

/// θ ← θ − lr·g' without momentum, g' = g (+ wd·θ with `DECAY`).
fn plain<E: Scalar, const DECAY: bool>(t: &mut [E], g: &[E], k: Coefficients<E>) {
    for (t, &g) in t.iter_mut().zip(g) {
        let g = if DECAY { g + *t * k.wd } else { g };
        *t = *t - g * k.lr;
    }
}

/// With momentum: buf ← μ·buf + g', θ ← θ − lr·d, d = buf (g' + μ·buf with `NESTEROV`).
fn heavy<E: Scalar, const DECAY: bool, const NESTEROV: bool>(
    t: &mut [E],
    g: &[E],
    b: &mut [E],
    k: Coefficients<E>,
) {
    for ((t, &g), b) in t.iter_mut().zip(g).zip(b) {
        let g = if DECAY { g + *t * k.wd } else { g };
        *b = *b * k.mu + g;
        let d = if NESTEROV { g + *b * k.mu } else { *b };
        *t = *t - d * k.lr;
    }
}
