//! Records what the binary is built from, for `env.json`, without asking git: the digest of
//! its source files ([`sources`]), and the rustc and burn versions.
//!
//! Nothing here reads `.git`: a commit, a checkout or `git status` refreshing the index does
//! not rerun this script, so the CLI crate is recompiled only when its sources change. The
//! git revision is looked up at run time (`env.rs`), which digests the commit's tree the same
//! way to tell whether the binary was built from it.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "src/sources.rs"]
mod sources;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists");
    let mut files: Vec<String> = sources::ROOT_FILES.iter().map(|f| f.to_string()).collect();
    let crates = root.join("crates");
    watch(&crates);
    for e in std::fs::read_dir(&crates)
        .expect("crates/ is readable")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
    {
        let name = e.file_name().to_string_lossy().into_owned();
        for part in sources::CRATE_PARTS {
            collect(
                &e.path().join(part),
                &format!("crates/{name}/{part}"),
                &mut files,
            );
        }
    }
    let entries = files
        .into_iter()
        .filter(|rel| sources::is_source(rel))
        .filter_map(|rel| {
            let path = root.join(&rel);
            watch(&path);
            let bytes = std::fs::read(&path).ok()?;
            Some((rel, blob_id(&bytes)))
        })
        .collect();

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let burn = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"burn\"\n"))
        .and_then(|p| p.lines().find(|l| l.starts_with("version = ")))
        .map(|l| {
            l.trim_start_matches("version = ")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "cargo:rustc-env=NOISEGEOM_SOURCE_DIGEST={}",
        sources::digest(entries)
    );
    println!("cargo:rustc-env=NOISEGEOM_SOURCE_ROOT={}", root.display());
    println!("cargo:rustc-env=NOISEGEOM_RUSTC={rustc_version}");
    println!("cargo:rustc-env=NOISEGEOM_BURN={burn}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}

fn watch(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}

/// `path` and, for a folder, every file under it, as paths relative to the workspace root.
/// A folder is watched too, so a file added to it reruns this script.
fn collect(path: &Path, rel: &str, out: &mut Vec<String>) {
    if path.is_file() {
        out.push(rel.to_string());
    } else if let Ok(dir) = std::fs::read_dir(path) {
        watch(path);
        for e in dir.filter_map(|e| e.ok()) {
            let child = format!("{rel}/{}", e.file_name().to_string_lossy());
            collect(&e.path(), &child, out);
        }
    }
}

/// git's id of a file's contents: SHA-1 of `blob <len>\0<bytes>`.
fn blob_id(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    sources::hex(&h.finalize())
}
