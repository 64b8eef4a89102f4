//! The set of files a `noisegeom` binary is built from, and its digest over git's blob ids.
//! Shared by `build.rs` (the digest of the files on disk, compiled in) and `env.rs` (the
//! digest of a commit's tree, at run time): equal digests mean the binary was built from
//! that commit's sources. An entry's id is git's blob id, SHA-1 of `blob <len>\0<bytes>`.

use sha1::{Digest, Sha1};

/// The workspace files outside `crates/` that the binary is built from.
pub const ROOT_FILES: [&str; 3] = ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"];
/// The parts of each crate that the binary is built from (its tests and benches are not).
pub const CRATE_PARTS: [&str; 4] = ["Cargo.toml", "build.rs", "src", "assets"];

/// Whether a file name is one git does not track here (hidden files, editor leftovers).
pub fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp")
}

/// Whether `path` (relative to the workspace root, `/`-separated) is one of the files the
/// binary is built from.
pub fn is_source(path: &str) -> bool {
    if ROOT_FILES.contains(&path) {
        return true;
    }
    let mut parts = path.split('/');
    let (Some("crates"), Some(_crate), Some(part)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    CRATE_PARTS.contains(&part) && !path.split('/').any(ignored)
}

/// The digest of `(path, blob id)` entries, in any order.
pub fn digest(mut entries: Vec<(String, String)>) -> String {
    entries.sort();
    let mut h = Sha1::new();
    for (path, id) in &entries {
        h.update(format!("{path}\t{id}\n").as_bytes());
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
