//! One process-wide lock around autodiff graph work, for burn 0.21's cross-thread defect
//! (tracel-ai/burn#5573, fixed upstream in 0.22 by PR #5647).
//!
//! burn-autodiff 0.21 keeps every graph in one process-wide registry, and each `backward()`
//! ends by sweeping every graph in it, other threads' included, for steps no live tensor
//! refers to. An op being recorded in another thread at that moment (its inputs' counts
//! dropped, its output not yet registered) can lose a step, and a parameter then silently
//! gets no gradient. Every forward that records a graph and the backward through it run
//! under [`autodiff_lock`], so no sweep ever meets a graph being built. Creating parameters,
//! reading gradients and dropping tensors need no lock. The lock is reentrant: code holding
//! it may call code that takes it again.

use parking_lot::{ReentrantMutex, ReentrantMutexGuard, const_reentrant_mutex};

static LOCK: ReentrantMutex<()> = const_reentrant_mutex(());

/// Held while a graph is recorded and differentiated; released when dropped.
pub type AutodiffGuard = ReentrantMutexGuard<'static, ()>;

/// Takes the process-wide autodiff lock (see the module's docs). Hold the guard from the
/// first tracked op of a forward pass until the gradients are read.
pub fn autodiff_lock() -> AutodiffGuard {
    LOCK.lock()
}
