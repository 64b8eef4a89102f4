//! SIGINT and SIGTERM, for people at a terminal and for batch schedulers (Slurm sends
//! SIGTERM, then SIGKILL about 30 s later, or earlier with `--signal`).
//!
//! - Commands with state worth saving (`train`, `figure`, `sweep run`) stop cooperatively:
//!   the signal sets [`noisegeom_data::stop`], which every long loop reads (training steps,
//!   probes, Lanczos iterations, Gram tiles, Hutchinson and SLQ draws, figure jobs).
//!   Training then checkpoints and exits; a figure or sweep keeps its finished jobs and its
//!   training runs' checkpoints. If the work has not reached a stopping point [`GRACE`]
//!   after the signal (a single long product), the process exits anyway: the newest
//!   checkpoint is intact, since every write is atomic.
//! - Every other command (`measure`, `export`, `bench`, `plot`) has nothing to save: it exits
//!   at once, and its results file, written atomically at the end, is simply not there.
//! - A second signal exits at once.
//!
//! The exit code is 128 + the signal: 130 after SIGINT, 143 after SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM, SIGXFSZ};
use signal_hook::iterator::Signals;

/// How long a cooperative stop may take before the process exits anyway.
pub const GRACE: Duration = Duration::from_secs(20);

static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// How a command answers the first signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSignal {
    /// Stop at the next stopping point, saving state (see the module's docs).
    Checkpoint,
    /// Exit at once.
    Exit,
}

/// The exit code for a command a signal stopped (130, 143), or `None` when none arrived.
pub fn exit_code() -> Option<u8> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some((128 + s) as u8),
    }
}

fn name(signal: i32) -> &'static str {
    if signal == SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    }
}

/// Installs the handlers: a thread waits for the signals and acts as described above.
pub fn install(mode: OnSignal) -> std::io::Result<()> {
    // A file-size limit (`ulimit -f`) would kill the process mid-write by SIGXFSZ; caught,
    // the write fails with "File too large" instead, and the command ends with one line.
    signal_hook::flag::register(SIGXFSZ, Arc::new(AtomicBool::new(false)))?;
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let first = RECEIVED
                    .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
                let code = 128 + signal;
                if !first || mode == OnSignal::Exit {
                    // Writes are atomic: an exit here leaves no partial file.
                    crate::error_line(&format!(
                        "interrupted by {}; exiting without writing results",
                        name(signal)
                    ));
                    std::process::exit(code);
                }
                noisegeom_data::stop::flag_handle().store(true, Ordering::SeqCst);
                tracing::warn!(
                    "{}: stopping at the next checkpointable point (a second signal exits at once)",
                    name(signal)
                );
                std::thread::spawn(move || {
                    std::thread::sleep(GRACE);
                    crate::error_line(&format!(
                        "interrupted by {}, and the work did not reach a stopping point within {} s; exiting; every checkpoint written so far is intact",
                        name(signal),
                        GRACE.as_secs()
                    ));
                    std::process::exit(code);
                });
            }
        })?;
    Ok(())
}
