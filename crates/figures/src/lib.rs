//! The paper's figures as experiments: each is a config file, one function that computes
//! every plotted number, a results file (JSON) and a PNG + SVG.
//! Users: docs/guide.md (how-tos) and docs/reference.md (every key, flag and field).
//!
//! - [`fig1`]: loss alignment μ across model sizes (Gaussian data).
//! - [`fig2a`]: α_k against λ_k over every nonzero eigen-direction of linear models.
//! - [`fig3`]: escape from a sharp minimum, SGD against GD.
//! - [`fig4`]: cyclical learning rates on a toy with a valley of minima of varying sharpness.
//! - [`spectra`]: figures 2b and 5, λ_k and α_k along the top of G for networks on image
//!   data, at initialisation and after training.
//! - [`fig6`]: the CNN trained with SGD+CLR, SGD at a constant LR and GD+CLR, with the
//!   noise geometry followed during training.
//! - [`networks`]: training inside a figure's job, resumably.
//! - [`runs`]: training curves of run directories (`noisegeom plot`), and their CSV.
//! - [`sweep`]: every figure as independent jobs (plan, run a shard, merge), which both
//!   `noisegeom figure` and `noisegeom sweep` go through.
//!
//! Configs are TOML with unknown keys rejected; a top-level `figure = "fig1"` names the
//! figure, and a `[quick]` table holds the overrides that `--quick` applies.

pub mod fig1;
pub mod fig2a;
pub mod fig3;
pub mod fig4;
pub mod fig6;
pub mod networks;
pub mod plot;
pub mod runs;
pub mod spectra;
pub mod sweep;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors from running a figure, one line each.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("figure config {path}: {message}")]
    Config { path: String, message: String },
    #[error(transparent)]
    Geometry(#[from] noisegeom_metrics::GeometryError),
    #[error(transparent)]
    Data(#[from] noisegeom_data::DataError),
    #[error(transparent)]
    Model(#[from] noisegeom_models::ModelError),
    #[error(transparent)]
    Train(#[from] noisegeom_train::TrainError),
    #[error("{0}")]
    Io(String),
    /// A stop request (SIGINT, SIGTERM) ended the work; finished jobs are kept.
    #[error("{0}")]
    Interrupted(String),
}

impl From<noisegeom_data::stop::Interrupted> for FigureError {
    fn from(e: noisegeom_data::stop::Interrupted) -> Self {
        FigureError::Interrupted(e.to_string())
    }
}

/// Reads the config of figure `name`; with `quick`, the `[quick]` table's keys replace the
/// top-level ones. A `figure` key naming another figure is refused before the fields are read
/// (another figure's config would otherwise fail on its fields).
pub fn load_config<T: DeserializeOwned>(
    path: &Path,
    name: &str,
    quick: bool,
) -> Result<T, FigureError> {
    let origin = path.display().to_string();
    let err = |message: String| FigureError::Config {
        path: origin.clone(),
        message,
    };
    let mut table = read_table(path)?;
    match table.remove("figure") {
        None => {}
        Some(toml::Value::String(s)) if s == name => {}
        Some(toml::Value::String(s)) => {
            return Err(err(format!(
                "its `figure` key is {s}, not {name}; pass the {name} config"
            )));
        }
        Some(_) => return Err(err("`figure` must be a string such as \"fig1\"".into())),
    }
    let q = table.remove("quick");
    if quick {
        match q {
            Some(toml::Value::Table(q)) => {
                for (k, v) in q {
                    table.insert(k, v);
                }
            }
            _ => return Err(err("--quick needs a [quick] table of overrides".into())),
        }
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| err(e.message().trim().replace('\n', " ")))
}

/// The `figure` key of a figure config: which figure it describes.
pub fn figure_of(path: &Path) -> Result<String, FigureError> {
    match read_table(path)?.remove("figure") {
        Some(toml::Value::String(s)) => Ok(s),
        _ => Err(FigureError::Config {
            path: path.display().to_string(),
            message: "no `figure` key; add one at the top, e.g. figure = \"fig1\"".into(),
        }),
    }
}

fn read_table(path: &Path) -> Result<toml::Table, FigureError> {
    let err = |message: String| FigureError::Config {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it ({e})")))?;
    toml::from_str(&text).map_err(|e| err(e.message().trim().replace('\n', " ")))
}

/// Where a figure's files go, and its provenance.
pub struct Output {
    pub dir: PathBuf,
    pub name: String,
}

impl Output {
    pub fn stem(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    fn write_json(&self, path: &Path, doc: &serde_json::Value) -> Result<(), FigureError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| FigureError::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        let mut bytes = serde_json::to_vec_pretty(doc).expect("json");
        bytes.push(b'\n');
        noisegeom_train::fsio::write_atomic(path, &bytes)
            .map_err(|e| FigureError::Io(format!("cannot write {}: {e}", path.display())))
    }

    /// Writes `<name>.json` atomically: the figure, the config and the results. It holds no
    /// clock, host or command line, so the same config gives the same bytes.
    pub fn write<C: Serialize>(
        &self,
        config: &C,
        quick: bool,
        results: &serde_json::Value,
    ) -> Result<PathBuf, FigureError> {
        let path = self.stem().with_extension("json");
        let doc = serde_json::json!({
            "figure": self.name,
            "quick": quick,
            "config": config,
            "results": results,
        });
        self.write_json(&path, &doc)?;
        Ok(path)
    }

    /// Writes `<name>.env.json` atomically: provenance and timings.
    pub fn write_env(&self, doc: &serde_json::Value) -> Result<PathBuf, FigureError> {
        let path = self.dir.join(format!("{}.env.json", self.name));
        self.write_json(&path, doc)?;
        Ok(path)
    }
}

/// Refuses a job whose estimated peak memory exceeds the process's limit (`--max-memory`);
/// `fix` names the config keys that would make it fit.
pub(crate) fn check_memory(
    estimate: impl FnOnce(u64) -> noisegeom_metrics::Resources,
    fix: &str,
) -> Result<(), FigureError> {
    let base = noisegeom_data::mem::resident_bytes().unwrap_or(0);
    Ok(estimate(base).check(fix)?)
}

/// A results struct as JSON (results hold plain numbers, strings and vectors).
pub fn to_value<T: Serialize>(results: &T) -> serde_json::Value {
    serde_json::to_value(results).expect("results serialise")
}

/// Mean and sample standard deviation.
pub fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = if x.len() > 1 {
        x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, v.sqrt())
}

/// The `q`-quantile of sorted values (nearest rank; 0 when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The least-squares slope of ln y on ln x over the points where both are positive.
pub fn loglog_slope(x: &[f64], y: &[f64]) -> f64 {
    let pts: Vec<(f64, f64)> = x
        .iter()
        .zip(y)
        .filter(|(a, b)| **a > 0.0 && **b > 0.0)
        .map(|(a, b)| (a.ln(), b.ln()))
        .collect();
    let m = pts.len() as f64;
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / m,
        pts.iter().map(|p| p.1).sum::<f64>() / m,
    );
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}
