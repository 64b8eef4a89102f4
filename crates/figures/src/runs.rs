//! Training curves of run directories: `noisegeom plot RUN_DIR [RUN_DIR…]` overlays runs
//! (loss, accuracy, learning rate, μ, λ_max of G and H, Tr G against the step) and writes
//! each run's events as CSV for plotting elsewhere.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::FigureError;
use crate::plot::{Panel, Series, save};

/// The events of one run's `metrics.jsonl`, by kind.
pub struct RunLog {
    pub dir: PathBuf,
    /// The run's name in legends and file names (its folder name).
    pub name: String,
    pub steps: Vec<Value>,
    pub evals: Vec<Value>,
    pub probes: Vec<Value>,
}

impl RunLog {
    pub fn read(dir: &Path) -> Result<RunLog, FigureError> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            FigureError::Io(format!(
                "cannot read {} ({e}); give a run directory written by `noisegeom train`",
                path.display()
            ))
        })?;
        let mut log = RunLog {
            dir: dir.to_path_buf(),
            name: dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string()),
            steps: Vec::new(),
            evals: Vec::new(),
            probes: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| {
                FigureError::Io(format!(
                    "{}:{}: not a JSON event ({e}); the file was edited or is not a noisegeom log",
                    path.display(),
                    i + 1
                ))
            })?;
            match v["kind"].as_str() {
                Some("step") => log.steps.push(v),
                Some("eval") => log.evals.push(v),
                Some("probe") => log.probes.push(v),
                _ => {}
            }
        }
        Ok(log)
    }

    /// `(step, value)` for every event of `events` where `get` gives a finite number.
    fn curve(events: &[Value], get: impl Fn(&Value) -> Option<f64>) -> Vec<(f64, f64)> {
        events
            .iter()
            .filter_map(|e| Some((e["step"].as_f64()?, get(e)?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    }
}

/// Draws the runs' curves into `stem.png` / `stem.svg` and writes their CSV files into
/// `stem`'s folder. Returns a one-paragraph summary.
pub fn plot_runs(runs: &[RunLog], stem: &Path) -> Result<String, FigureError> {
    let num = |k: &'static str| move |e: &Value| e[k].as_f64();
    let nested = |a: &'static str, b: &'static str| move |e: &Value| e[a][b].as_f64();
    let label = |r: &RunLog, what: &str| {
        if runs.len() == 1 {
            what.to_string()
        } else {
            format!("{} {what}", r.name)
        }
    };
    let panel = |title: &str, y: &str, y_log: bool, series: Vec<Series>| Panel {
        title: title.into(),
        x_label: "step".into(),
        y_label: y.into(),
        y_log,
        series,
        ..Panel::default()
    };
    let mut loss = Vec::new();
    let mut acc = Vec::new();
    let mut lr = Vec::new();
    let mut mu = Vec::new();
    let mut lmax = Vec::new();
    let mut trace = Vec::new();
    for r in runs {
        loss.push(Series::line(
            label(r, "train (minibatch)"),
            RunLog::curve(&r.steps, num("loss")),
        ));
        loss.push(Series::line(
            label(r, "test"),
            RunLog::curve(&r.evals, nested("test", "mse")),
        ));
        acc.push(Series::line(
            label(r, "test"),
            RunLog::curve(&r.evals, nested("test", "accuracy")),
        ));
        lr.push(Series::line(
            label(r, ""),
            RunLog::curve(&r.steps, num("lr")),
        ));
        mu.push(Series::line(
            label(r, "μ"),
            RunLog::curve(&r.probes, num("mu")),
        ));
        lmax.push(Series::line(
            label(r, "λ_max(G)"),
            RunLog::curve(&r.probes, num("lambda_max_g")),
        ));
        lmax.push(Series::line(
            label(r, "λ_max(H)"),
            RunLog::curve(&r.probes, num("lambda_max_h")),
        ));
        trace.push(Series::line(
            label(r, "Tr G"),
            RunLog::curve(&r.probes, num("trace_g")),
        ));
    }
    let panels = vec![
        panel("loss (square loss, 1/2n Σ||f − y||²)", "loss", true, loss),
        panel("test accuracy", "accuracy", false, acc),
        panel("learning rate", "η", false, lr),
        panel("loss alignment μ on the probe set", "μ", false, mu),
        panel("sharpness", "λ_max", false, lmax),
        panel("Tr G", "Tr G", false, trace),
    ];
    save(stem, &panels, 3, (560, 400))?;
    let dir = stem.parent().unwrap_or(Path::new("."));
    let mut text = String::new();
    for r in runs {
        let files = write_csv(r, dir)?;
        let _ = writeln!(
            text,
            "{}: {} step, {} eval, {} probe events; CSV: {}",
            r.name,
            r.steps.len(),
            r.evals.len(),
            r.probes.len(),
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = write!(
        text,
        "plots: {}, {}",
        stem.with_extension("png").display(),
        stem.with_extension("svg").display()
    );
    Ok(text)
}

/// `<name>-steps.csv`, `<name>-evals.csv`, `<name>-probes.csv` (those with events).
/// Columns are the events' scalar fields; arrays (top-k λ_k, α_k, g_k) become `key_1..key_k`.
pub fn write_csv(run: &RunLog, dir: &Path) -> Result<Vec<PathBuf>, FigureError> {
    let mut written = Vec::new();
    for (kind, events) in [
        ("steps", &run.steps),
        ("evals", &run.evals),
        ("probes", &run.probes),
    ] {
        if events.is_empty() {
            continue;
        }
        let rows: Vec<Vec<(String, String)>> = events.iter().map(|e| flat(e, "")).collect();
        let mut header: Vec<String> = Vec::new();
        for row in &rows {
            for (k, _) in row {
                if k != "kind" && !header.contains(k) {
                    header.push(k.clone());
                }
            }
        }
        let mut out = header.join(",") + "\n";
        for row in &rows {
            let cells: Vec<&str> = header
                .iter()
                .map(|h| {
                    row.iter()
                        .find(|(k, _)| k == h)
                        .map_or("", |(_, v)| v.as_str())
                })
                .collect();
            out += &cells.join(",");
            out.push('\n');
        }
        let path = dir.join(format!("{}-{kind}.csv", run.name));
        noisegeom_train::fsio::write_atomic(&path, out.as_bytes())
            .map_err(|e| FigureError::Io(format!("cannot write {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// Flattens an event into (column, cell) pairs: objects join keys with `_`, arrays number
/// their entries from 1, and an undefined ratio becomes an empty cell.
fn flat(v: &Value, prefix: &str) -> Vec<(String, String)> {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}_{k}")
        }
    };
    match v {
        Value::Object(o) if o.contains_key("undefined") && o.len() == 1 => {
            vec![(prefix.to_string(), String::new())]
        }
        Value::Object(o) => o.iter().flat_map(|(k, x)| flat(x, &key(k))).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .flat_map(|(i, x)| flat(x, &key(&(i + 1).to_string())))
            .collect(),
        Value::Null => vec![(prefix.to_string(), String::new())],
        Value::String(s) => vec![(
            prefix.to_string(),
            format!("\"{}\"", s.replace('"', "\"\"")),
        )],
        other => vec![(prefix.to_string(), other.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_flatten_to_csv_cells() {
        let v: Value = serde_json::json!({
            "kind": "probe", "step": 4, "mu": {"undefined": "L = 0"},
            "g_k": [0.5, 0.25], "test": {"mse": 0.1}, "method": "exact (Gram)"
        });
        let cells = flat(&v, "");
        let get = |k: &str| cells.iter().find(|(c, _)| c == k).map(|(_, v)| v.clone());
        assert_eq!(get("step").as_deref(), Some("4"));
        assert_eq!(get("mu").as_deref(), Some(""));
        assert_eq!(get("g_k_1").as_deref(), Some("0.5"));
        assert_eq!(get("g_k_2").as_deref(), Some("0.25"));
        assert_eq!(get("test_mse").as_deref(), Some("0.1"));
        assert_eq!(get("method").as_deref(), Some("\"exact (Gram)\""));
    }
}
