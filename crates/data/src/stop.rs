//! The process-wide stop request: set by the command line when SIGINT or SIGTERM arrives,
//! read by every long loop (training steps, probes, Lanczos iterations, Gram tile pairs,
//! Hutchinson and SLQ draws, figure jobs), so a batch scheduler's signal is honoured within
//! seconds. Library code never exits: a loop that sees the request stops early, and the
//! entry point that called it returns an interruption error instead of a result, so a
//! partial result never escapes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// The flag itself, for a signal handler to set (`signal_hook::flag::register`).
pub fn flag_handle() -> Arc<AtomicBool> {
    flag().clone()
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}

/// A stop was requested while work was under way; nothing partial was returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("interrupted (a stop was requested by SIGINT or SIGTERM)")]
pub struct Interrupted;

/// `Err(Interrupted)` once a stop was requested.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
