//! docs/reference.md against the command line: every flag and positional argument of every
//! subcommand is documented under its subcommand, and every documented one exists. The
//! commands written in README.md and the guide parse with today's flags.

use std::collections::BTreeSet;

use clap::CommandFactory;

use crate::Cli;
use crate::doc_commands::{documented_commands, simple_commands};

fn doc(name: &str) -> String {
    let path = format!("{}/../../{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The flags documented under each `### ` heading of the command-line section.
fn documented() -> Vec<(String, BTreeSet<String>)> {
    let text = doc("docs/reference.md");
    let section = text
        .split("\n## Command-line flags")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Command-line flags section");
    section
        .split("\n### ")
        .skip(1)
        .map(|part| {
            let heading = part.lines().next().unwrap_or("").replace('`', "");
            let flags = part
                .lines()
                .filter_map(|l| l.strip_prefix("| `"))
                .filter_map(|c| c.split('`').next())
                .map(str::to_string)
                .collect();
            (heading.trim().to_string(), flags)
        })
        .collect()
}

/// The flags of a command as written in the reference: `--long`, or `<NAME>` for a
/// positional argument; clap's own help and version flags left out.
fn flags(cmd: &clap::Command, global: bool) -> BTreeSet<String> {
    cmd.get_arguments()
        .filter(|a| a.is_global_set() == global)
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| match a.get_long() {
            Some(long) => format!("--{long}"),
            None => format!(
                "<{}>",
                a.get_value_names()
                    .and_then(|v| v.first().map(|s| s.to_string()))
                    .unwrap_or_else(|| a.get_id().as_str().to_uppercase())
            ),
        })
        .collect()
}

#[test]
fn the_flag_reference_matches_the_command_line() {
    let cli = Cli::command();
    let mut code: Vec<(String, BTreeSet<String>)> =
        vec![("Global flags".into(), flags(&cli, true))];
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, BTreeSet<String>)>) {
        for sub in cmd.get_subcommands() {
            let name = format!("{prefix} {}", sub.get_name());
            if sub.has_subcommands() {
                walk(sub, &name, out);
            } else {
                out.push((name, flags(sub, false)));
            }
        }
    }
    walk(&cli, "noisegeom", &mut code);
    let doc = documented();
    for (name, want) in &code {
        let got = doc
            .iter()
            .find(|(h, _)| h == name)
            .unwrap_or_else(|| panic!("docs/reference.md has no section `{name}`"));
        assert_eq!(
            &got.1, want,
            "{name}: documented flags (left) differ from the command line's (right)"
        );
    }
    for (heading, _) in &doc {
        assert!(
            code.iter().any(|(n, _)| n == heading),
            "docs/reference.md documents `{heading}`, which is not a command"
        );
    }
}

/// Every command README.md and docs/guide.md show parses with today's flags (a renamed or
/// removed flag fails here); the tests and CI run what is cheap to run of them.
#[test]
fn documented_commands_parse() {
    let mut seen = 0;
    for file in ["README.md", "docs/guide.md"] {
        let commands: Vec<String> = documented_commands(file)
            .iter()
            .flat_map(|c| simple_commands(c))
            .filter(|c| c.starts_with("noisegeom "))
            .collect();
        for cmd in commands {
            // A Slurm array task's variables, as the sbatch script sets them.
            let cmd = cmd
                .replace("$SLURM_ARRAY_TASK_ID", "0")
                .replace("$SLURM_ARRAY_TASK_COUNT", "4");
            let words: Vec<String> = cmd
                .split_whitespace()
                .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string())
                .collect();
            if let Err(e) = <Cli as clap::Parser>::try_parse_from(&words) {
                panic!("{file}: `{cmd}` does not parse: {e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} commands found");
}

/// Every output field docs/reference.md documents is still named somewhere in the code (a
/// field removed from the code fails here; one added or renamed fails the CLI tests, which
/// check every field of the files they write against the reference).
#[test]
fn documented_output_fields_exist_in_the_code() {
    fn sources(dir: &std::path::Path, text: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, text);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut code = String::new();
    sources(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        &mut code,
    );
    let text = doc("docs/reference.md");
    let outputs = text
        .split("\n## Output files")
        .nth(1)
        .expect("an Output files section");
    let mut checked = 0;
    for cell in outputs.lines().filter_map(|l| l.strip_prefix("| `")) {
        let field = cell.split('`').next().unwrap();
        let name = field
            .rsplit(['.', ':'])
            .next()
            .unwrap()
            .trim_end_matches("[]");
        let named = [
            format!("\"{name}\""),
            format!("{name}:"),
            format!("{name},"),
            format!(" {name}\n"),
        ]
        .iter()
        .any(|p| code.contains(p.as_str()));
        assert!(
            named,
            "docs/reference.md documents `{field}`, but no code names `{name}`"
        );
        checked += 1;
    }
    assert!(checked > 500, "{checked} fields");
}

/// README's performance tables are what their results files say: in the CPU table each side's
/// time is the median over rounds of each round's median (`results/bench/noisegeom-cpu.json`,
/// `pytorch-cpu.json`), and the ratio PyTorch's time over ours for training, ours over
/// PyTorch's otherwise, as README states; the lavapipe table's ratios and counts are those of
/// `results/bench/wgpu-lavapipe-counts.json`.
#[test]
fn readme_performance_table_matches_its_results_files() {
    let medians = |file: &str| -> std::collections::BTreeMap<String, f64> {
        let v: serde_json::Value = serde_json::from_str(&doc(file)).unwrap();
        let mut per: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        for t in v["timings"].as_array().unwrap() {
            per.entry(t["workload"].as_str().unwrap().to_string())
                .or_default()
                .push(t["median_s"].as_f64().unwrap());
        }
        per.into_iter()
            .map(|(k, mut v)| {
                v.sort_by(f64::total_cmp);
                let m = if v.len() % 2 == 1 {
                    v[v.len() / 2]
                } else {
                    (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
                };
                (k, m)
            })
            .collect()
    };
    let ours = medians("results/bench/noisegeom-cpu.json");
    let theirs = medians("results/bench/pytorch-cpu.json");
    let readme = doc("README.md");
    let table = readme
        .split("\n## Performance")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    // The section's tables: runs of lines that start with `|`, each named by its header row.
    let mut tables: Vec<Vec<&str>> = Vec::new();
    let mut previous_was_row = false;
    for line in table.lines() {
        let row = line.starts_with('|');
        if row && !previous_was_row {
            tables.push(Vec::new());
        }
        if row {
            tables.last_mut().unwrap().push(line);
        }
        previous_was_row = row;
    }
    let named = |header: &str| -> Vec<&str> {
        tables
            .iter()
            .find(|t| t[0].starts_with(header))
            .unwrap_or_else(|| panic!("README's performance section has no `{header}` table"))
            .iter()
            .skip(2)
            .copied()
            .collect()
    };
    lavapipe_table_matches_its_results_file(&named("| wgpu |"), &tables);
    let mut rows = 0;
    for line in named("| workload | noisegeom") {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let workload = cells[1].split_whitespace().next().unwrap();
        let (a, b, ratio): (f64, f64, f64) = (
            cells[2].parse().unwrap(),
            cells[3].parse().unwrap(),
            cells[4].parse().unwrap(),
        );
        let (o, t) = (ours[workload], theirs[workload]);
        assert_eq!(format!("{o:.4}"), format!("{a:.4}"), "{workload}: ours");
        assert_eq!(
            format!("{t:.4}"),
            format!("{b:.4}"),
            "{workload}: PyTorch's"
        );
        let want = if workload.starts_with("train") {
            t / o
        } else {
            o / t
        };
        assert_eq!(
            format!("{want:.2}"),
            format!("{ratio:.2}"),
            "{workload}: ratio"
        );
        rows += 1;
    }
    assert_eq!(rows, 9, "README's performance rows");
}

/// README's lavapipe table against `results/bench/wgpu-lavapipe-counts.json`: per workload
/// the wgpu median over the flex one, and the launches and host reads per wgpu call.
fn lavapipe_table_matches_its_results_file(rows: &[&str], tables: &[Vec<&str>]) {
    let v: serde_json::Value =
        serde_json::from_str(&doc("results/bench/wgpu-lavapipe-counts.json")).unwrap();
    let timing = |workload: &str, backend: &str| -> &serde_json::Value {
        v["timings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["workload"] == workload && t["backend"].as_str().unwrap().contains(backend))
            .unwrap_or_else(|| panic!("no {backend} timing of {workload}"))
    };
    let header = tables
        .iter()
        .find(|t| t[0].starts_with("| wgpu |"))
        .unwrap()[0];
    let cells =
        |line: &str| -> Vec<String> { line.split('|').map(|c| c.trim().to_string()).collect() };
    let workloads = cells(header);
    let (ratios, counts) = (cells(rows[0]), cells(rows[1]));
    assert_eq!(rows.len(), 2, "the lavapipe table's rows");
    for (i, workload) in workloads.iter().enumerate().skip(2) {
        if workload.is_empty() {
            continue;
        }
        let (gpu, flex) = (timing(workload, "wgpu"), timing(workload, "flex"));
        let ratio = gpu["median_s"].as_f64().unwrap() / flex["median_s"].as_f64().unwrap();
        assert_eq!(format!("{ratio:.1}"), ratios[i], "{workload}: wgpu ÷ flex");
        let launches = gpu["kernels"]["launches_per_call"].as_f64().unwrap();
        let reads = gpu["host_reads_per_call"].as_f64().unwrap();
        assert_eq!(
            format!("{launches:.0} / {reads:.0}"),
            counts[i],
            "{workload}: counts"
        );
    }
}
