//! The shell commands README.md and docs/guide.md show, for the tests that parse them
//! (`reference.rs`) and run them (`tests/cli/docs.rs`).

/// The commands of every `sh`/`bash` block of the file `name` (relative to the workspace
/// root) in document order: a trailing `# comment` dropped, `\` continuations joined,
/// `cargo run --release -- ARGS` written `noisegeom ARGS`, and a line that continues
/// nothing and starts with neither `noisegeom ` nor another program kept as it is.
pub fn documented_commands(name: &str) -> Vec<String> {
    let path = format!("{}/../../{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut fenced = false;
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            fenced = t.len() > 3 && (t.contains("sh") || t.contains("bash")) && !fenced;
            continue;
        }
        if !fenced {
            continue;
        }
        let code = t.split(" #").next().unwrap_or(t).trim();
        let code = match code.strip_prefix("cargo run --release -- ") {
            Some(rest) => format!("noisegeom {rest}"),
            None => code.to_string(),
        };
        if code.is_empty() || code.starts_with('#') {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(head) => current.push_str(&format!("{head} ")),
            None => {
                current.push_str(&code);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The simple commands of a documented command line: split at `&&`, `;` and `|`.
pub fn simple_commands(line: &str) -> Vec<String> {
    line.split(['&', ';', '|'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}
