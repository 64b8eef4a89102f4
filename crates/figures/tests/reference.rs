//! docs/reference.md against the code: every key the config readers accept is documented,
//! and every documented key is one they accept.
//!
//! The readers' own errors tell what they accept, so the set of keys is read off the code,
//! not copied into this test: a table holding an unknown key `zz_probe` makes serde name every
//! field the table takes ("unknown field `zz_probe`, expected one of …"), a tagged table
//! without its tag names the tag ("missing field `kind`"), and a tag of `zz_probe` names every
//! variant. Each table found is explored the same way, one level down, as a table, an array
//! of tables or a scalar.

use std::collections::BTreeSet;

use noisegeom_figures::fig1::Fig1Config;
use noisegeom_figures::fig2a::Fig2aConfig;
use noisegeom_figures::fig3::Fig3Config;
use noisegeom_figures::fig4::Fig4Config;
use noisegeom_figures::fig6::Fig6Config;
use noisegeom_figures::spectra::SpectraConfig;
use noisegeom_train::ExperimentConfig;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

const PROBE: &str = "zz_probe";

/// One level of a key path: the key, whether it holds an array of tables, and the entries
/// its table needs to be read at all (a tagged table's tag).
#[derive(Clone)]
struct Level {
    key: String,
    array: bool,
    fixed: Vec<(String, Value)>,
}

/// What serde said of a document with a probe at some level.
fn parse<T: DeserializeOwned>(doc: Table) -> String {
    match Value::Table(doc).try_into::<T>() {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// The document holding `leaf` (a table's entries) at `levels`.
fn document(levels: &[Level], leaf: Table) -> Table {
    let mut inner = leaf;
    for level in levels.iter().rev() {
        for (k, v) in &level.fixed {
            inner.insert(k.clone(), v.clone());
        }
        let value = if level.array {
            Value::Array(vec![Value::Table(inner)])
        } else {
            Value::Table(inner)
        };
        inner = Table::new();
        inner.insert(level.key.clone(), value);
    }
    inner
}

/// The backticked names after `marker` in a serde message, up to the end of its list.
fn names_after(message: &str, marker: &str) -> Option<Vec<String>> {
    let rest = &message[message.find(marker)? + marker.len()..];
    let list = rest.split(['\n', ';']).next().unwrap_or(rest);
    if list.contains("there are no fields") || list.contains("there are no variants") {
        return Some(Vec::new());
    }
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

fn single(key: &str, value: Value) -> Table {
    let mut t = Table::new();
    t.insert(key.into(), value);
    t
}

/// Every key path under `levels` (dotted, `[]` after an array of tables), each tagged table
/// explored in every variant. `variants_seen` stops a recursive type (a layer list inside a
/// layer) at its first repetition.
fn explore<T: DeserializeOwned>(
    levels: &[Level],
    path: &str,
    variants_seen: &[Vec<String>],
    out: &mut BTreeSet<String>,
) {
    let said = parse::<T>(document(levels, single(PROBE, Value::Integer(1))));
    let fields =
        if let Some(fields) = names_after(&said, &format!("unknown field `{PROBE}`, expected")) {
            fields
        } else if said.contains(&format!("unknown field `{PROBE}`, there are no fields")) {
            Vec::new()
        } else if let Some(tag) = tag_of(&said) {
            // A tagged table: its variants, each explored with its tag set.
            let mut tagged = levels.to_vec();
            let last = tagged.last_mut().expect("the root is not tagged");
            last.fixed.push((tag.clone(), Value::String(PROBE.into())));
            let said = parse::<T>(document(&tagged, Table::new()));
            let variants = names_after(&said, &format!("unknown variant `{PROBE}`, expected"))
                .unwrap_or_else(|| panic!("{path}: the tag `{tag}` names no variants: {said}"));
            if variants_seen.contains(&variants) {
                return;
            }
            let mut seen = variants_seen.to_vec();
            seen.push(variants.clone());
            out.insert(format!("{path}{tag}"));
            for v in variants {
                let mut with = levels.to_vec();
                let last = with.last_mut().expect("tagged");
                last.fixed.push((tag.clone(), Value::String(v)));
                explore::<T>(&with, path, &seen, out);
            }
            return;
        } else {
            panic!("{path}: the probe got no list of fields: {said}");
        };
    for field in fields {
        let key = format!("{path}{field}");
        out.insert(key.clone());
        // A table, an array of tables, or neither.
        for array in [false, true] {
            let mut deeper = levels.to_vec();
            deeper.push(Level {
                key: field.clone(),
                array,
                fixed: Vec::new(),
            });
            let said = parse::<T>(document(&deeper, single(PROBE, Value::Integer(1))));
            let table = said.contains(&format!("unknown field `{PROBE}`"))
                || tag_of(&said).is_some_and(|t| is_tag::<T>(&deeper, &t));
            if table {
                let sub = format!("{key}{}.", if array { "[]" } else { "" });
                explore::<T>(&deeper, &sub, variants_seen, out);
                break;
            }
        }
    }
}

fn tag_of(said: &str) -> Option<String> {
    said.split("missing field `")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .map(str::to_string)
}

/// Whether `tag` is the tag of the table at `levels` (a variant name is then asked for),
/// rather than a required field of a table around it.
fn is_tag<T: DeserializeOwned>(levels: &[Level], tag: &str) -> bool {
    let mut tagged = levels.to_vec();
    let last = tagged.last_mut().expect("a level");
    last.fixed.push((tag.into(), Value::String(PROBE.into())));
    parse::<T>(document(&tagged, Table::new())).contains(&format!("unknown variant `{PROBE}`"))
}

/// Every key the reader of `T` accepts.
fn accepted<T: DeserializeOwned>() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    explore::<T>(&[], "", &[], &mut out);
    out
}

/// The first backticked cell of each table row between the heading `start` and the next
/// heading of the same or a higher level.
fn documented(start: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/reference.md");
    let text = std::fs::read_to_string(path).expect("docs/reference.md");
    let depth = start.chars().take_while(|c| *c == '#').count();
    let mut inside = false;
    let mut keys = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            let d = line.chars().take_while(|c| *c == '#').count();
            if line.trim() == start {
                inside = true;
                continue;
            }
            if inside && d <= depth {
                break;
            }
        }
        if inside
            && let Some(cell) = line.strip_prefix("| `")
            && let Some(key) = cell.split('`').next()
        {
            keys.push(key.to_string());
        }
    }
    assert!(!keys.is_empty(), "no rows under {start}");
    keys
}

fn compare(what: &str, code: &BTreeSet<String>, doc: &BTreeSet<String>) {
    let missing: Vec<&String> = code.difference(doc).collect();
    let extra: Vec<&String> = doc.difference(code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: keys the code accepts but docs/reference.md lacks: {missing:?}; documented keys the code does not accept: {extra:?}"
    );
}

#[test]
fn the_experiment_config_reference_matches_the_reader() {
    let code = accepted::<ExperimentConfig>();
    assert!(code.contains("train.lr.max") && code.contains("model.layers[].shortcut"));
    let doc: BTreeSet<String> = documented("### Experiment config").into_iter().collect();
    compare("experiment config", &code, &doc);
}

#[test]
fn the_figure_config_references_match_their_readers() {
    let figures: [(&str, BTreeSet<String>); 7] = [
        ("fig1", accepted::<Fig1Config>()),
        ("fig2a", accepted::<Fig2aConfig>()),
        ("fig2b", accepted::<SpectraConfig>()),
        ("fig3", accepted::<Fig3Config>()),
        ("fig4", accepted::<Fig4Config>()),
        ("fig5", accepted::<SpectraConfig>()),
        ("fig6", accepted::<Fig6Config>()),
    ];
    let doc = documented("### Figure configs");
    for (name, keys) in figures {
        // `figure` names the figure and `[quick]` holds overrides: both are read before the
        // config itself (`load_config`).
        let code: BTreeSet<String> = keys
            .into_iter()
            .map(|k| format!("{name}.{k}"))
            .chain([format!("{name}.figure"), format!("{name}.quick")])
            .collect();
        let mine: BTreeSet<String> = doc
            .iter()
            .filter(|k| k.starts_with(&format!("{name}.")))
            .cloned()
            .collect();
        compare(name, &code, &mine);
    }
}
