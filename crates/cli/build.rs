//! Records the git revision, dirty flag, rustc and burn versions for `env.json`.
use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let rev = output("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
        .map(|s| if s.is_empty() { "false" } else { "true" })
        .unwrap_or("unknown");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    let lock = std::fs::read_to_string("../../Cargo.lock").unwrap_or_default();
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
    println!("cargo:rustc-env=NOISEGEOM_GIT_REV={rev}");
    println!("cargo:rustc-env=NOISEGEOM_GIT_DIRTY={dirty}");
    println!("cargo:rustc-env=NOISEGEOM_RUSTC={rustc_version}");
    println!("cargo:rustc-env=NOISEGEOM_BURN={burn}");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/logs/HEAD");
    println!("cargo:rerun-if-changed=../../.git/index");
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    // Edited sources change the dirty flag without touching git's files.
    println!("cargo:rerun-if-changed=../../crates");
}
