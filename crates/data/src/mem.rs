//! This process's memory, as Linux reports it (`/proc`); `None` elsewhere.

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory now, in bytes.
pub fn resident_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// The peak resident memory since the start or the last [`reset_peak`], in bytes.
pub fn peak_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Resets the peak mark (Linux ≥ 4.0; elsewhere a no-op).
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The machine's physical memory, in bytes.
pub fn physical_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

/// The memory limit set by [`set_limit`] (0: none set).
static LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The share of physical memory a job may plan to use when no limit is set: 80%.
pub const DEFAULT_FRACTION: f64 = 0.8;

/// Sets the memory limit that jobs' estimates are checked against (`--max-memory`).
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// The memory limit: the one set by [`set_limit`], else [`DEFAULT_FRACTION`] of physical
/// memory; `None` where neither is known.
pub fn limit() -> Option<u64> {
    match LIMIT.load(std::sync::atomic::Ordering::Relaxed) {
        0 => physical_bytes().map(|b| (b as f64 * DEFAULT_FRACTION) as u64),
        b => Some(b),
    }
}
