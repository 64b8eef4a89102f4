//! The provenance written next to every result: code revision, toolchain, backend, machine.

use serde_json::{Value, json};

/// `env.json` for a run or a results file.
pub fn env_info(backend: &str, seed: u64, command: &[String]) -> Value {
    json!({
        "noisegeom_version": env!("CARGO_PKG_VERSION"),
        "git_revision": env!("NOISEGEOM_GIT_REV"),
        "git_dirty": env!("NOISEGEOM_GIT_DIRTY"),
        "burn_version": env!("NOISEGEOM_BURN"),
        "rustc": env!("NOISEGEOM_RUSTC"),
        "backend": backend,
        "seed": seed,
        "command": command,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": cpu_model(),
        "hostname": std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
        "started_utc": utc_now(),
    })
}

/// The code's identity for reusing results: version, git revision, and whether the tree
/// was dirty at build time.
pub fn code_identity() -> String {
    format!(
        "noisegeom {} {}{}",
        env!("CARGO_PKG_VERSION"),
        env!("NOISEGEOM_GIT_REV"),
        if env!("NOISEGEOM_GIT_DIRTY") == "false" {
            ""
        } else {
            " (dirty)"
        }
    )
}

/// The CPU's model name (Linux `/proc/cpuinfo`; empty elsewhere): timings from different
/// machines must not be compared as if they were one.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SSZ`, without a date-time dependency.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYYMMDD-HHMMSS`, for default output folder names.
pub fn stamp() -> String {
    utc_now()
        .replace(['-', ':'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_string()
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        // 2026-11-27 is day 20_784.
        assert_eq!(super::civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(super::civil_from_days(19_782), (2024, 2, 29));
    }
}
