//! The provenance written next to every result: code revision, toolchain, backend, machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::sources;

/// `env.json` for a run or a results file.
pub fn env_info(backend: &str, seed: u64, command: &[String]) -> Value {
    let code = code();
    json!({
        "noisegeom_version": env!("CARGO_PKG_VERSION"),
        "git_revision": code.revision,
        "git_dirty": code.dirty,
        "source_digest": env!("NOISEGEOM_SOURCE_DIGEST"),
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

/// The code's identity, for people: version, git revision, and whether the binary's
/// sources differ from that revision's.
pub fn code_identity() -> String {
    let code = code();
    format!(
        "noisegeom {} {}{}",
        env!("CARGO_PKG_VERSION"),
        code.revision,
        match code.dirty {
            "false" => "",
            "true" => " (dirty)",
            _ => " (dirty: unknown)",
        }
    )
}

/// Where the binary's sources stand in git.
struct Code {
    /// The commit checked out where the binary was built (or in the working folder), or
    /// `unknown` where no git repository is found.
    revision: String,
    /// `false` when the binary was built from exactly that commit's sources, `true` when
    /// its sources differ (uncommitted edits, or a binary older than the checkout),
    /// `unknown` without git.
    dirty: &'static str,
}

/// Looked up once per process, at run time: the build records only the digest of the
/// sources (`build.rs`), so a commit does not recompile the binary.
fn code() -> &'static Code {
    static CODE: OnceLock<Code> = OnceLock::new();
    CODE.get_or_init(|| {
        let built = env!("NOISEGEOM_SOURCE_DIGEST");
        let mut roots = vec![PathBuf::from(env!("NOISEGEOM_SOURCE_ROOT"))];
        if let Some(top) = git(Path::new("."), &["rev-parse", "--show-toplevel"]) {
            roots.push(PathBuf::from(top));
        }
        let mut first = None;
        for root in roots {
            let Some(revision) = git(&root, &["rev-parse", "HEAD"]) else {
                continue;
            };
            let tree = git(&root, &["ls-tree", "-r", "-z", "HEAD"]).unwrap_or_default();
            if tree_digest(&tree) == built {
                return Code {
                    revision,
                    dirty: "false",
                };
            }
            first.get_or_insert(revision);
        }
        match first {
            Some(revision) => Code {
                revision,
                dirty: "true",
            },
            None => Code {
                revision: "unknown".into(),
                dirty: "unknown",
            },
        }
    })
}

/// The digest of the source files in `git ls-tree -r -z` output, as `build.rs` takes it of
/// the files on disk.
fn tree_digest(ls_tree: &str) -> String {
    let entries = ls_tree
        .split('\0')
        .filter_map(|line| {
            let (meta, path) = line.split_once('\t')?;
            let mut meta = meta.split(' ');
            let (_mode, kind, id) = (meta.next()?, meta.next()?, meta.next()?);
            (kind == "blob" && sources::is_source(path)).then(|| (path.to_string(), id.to_string()))
        })
        .collect();
    sources::digest(entries)
}

/// `git -C dir args…`'s output, trimmed, when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
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
    fn a_trees_digest_covers_the_binarys_sources_only() {
        // `git ls-tree -r -z` lines; ce0136… is git's blob id of "hello\n".
        let id = "ce013625030ba8dba906f756967f9e9ca394464a";
        let line = |path: &str| format!("100644 blob {id}\t{path}\0");
        let sources = [
            "Cargo.lock",
            "crates/cli/build.rs",
            "crates/models/src/net.rs",
        ];
        let others = [
            "README.md",
            "crates/metrics/tests/engine.rs",
            "tests/cli/main.rs",
            "crates/models/src/.net.rs.swp",
        ];
        let tree: String = sources.iter().chain(&others).map(|p| line(p)).collect();
        let expected = crate::sources::digest(
            sources
                .iter()
                .map(|p| (p.to_string(), id.to_string()))
                .collect(),
        );
        assert_eq!(super::tree_digest(&tree), expected);
        // Any change to a source's contents changes the digest.
        let edited = tree.replacen(id, "0000000000000000000000000000000000000000", 1);
        assert_ne!(super::tree_digest(&edited), expected);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        // 2026-11-27 is day 20_784.
        assert_eq!(super::civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(super::civil_from_days(19_782), (2024, 2, 29));
    }
}
