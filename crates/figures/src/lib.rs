//! The paper's figures as experiments: each is a config file, one function that computes
//! every plotted number, a results file (JSON) and a PNG + SVG.
//!
//! - [`fig1`]: loss alignment μ across model sizes (Gaussian data).
//! - [`fig2a`]: α_k against λ_k over every nonzero eigen-direction of linear models.
//! - [`fig3`]: escape from a sharp minimum, SGD against GD.
//! - [`fig4`]: cyclical learning rates on a toy with a valley of minima of varying sharpness.
//! - [`runs`]: training curves of run directories (`noisegeom plot`), and their CSV.
//!
//! Configs are TOML with unknown keys rejected; a `[quick]` table holds the overrides that
//! `--quick` applies.

pub mod fig1;
pub mod fig2a;
pub mod fig3;
pub mod fig4;
pub mod plot;
pub mod runs;

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
    #[error("{0}")]
    Io(String),
}

/// Reads a figure config; with `quick`, the `[quick]` table's keys replace the top-level ones.
pub fn load_config<T: DeserializeOwned>(path: &Path, quick: bool) -> Result<T, FigureError> {
    let origin = path.display().to_string();
    let err = |message: String| FigureError::Config {
        path: origin.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it ({e})")))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| err(e.message().trim().replace('\n', " ")))?;
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

/// Where a figure's files go, and its provenance.
pub struct Output {
    pub dir: PathBuf,
    pub name: String,
    /// `env.json`-style provenance from the CLI (git revision, backend, command…).
    pub env: serde_json::Value,
}

impl Output {
    pub fn stem(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Writes `<name>.json` atomically with the config, the env and the results.
    pub fn write<C: Serialize, R: Serialize>(
        &self,
        config: &C,
        quick: bool,
        seconds: f64,
        results: &R,
    ) -> Result<PathBuf, FigureError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| FigureError::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        let doc = serde_json::json!({
            "figure": self.name,
            "quick": quick,
            "env": self.env,
            "config": config,
            "wall_seconds": seconds,
            "results": results,
        });
        let path = self.stem().with_extension("json");
        noisegeom_train::fsio::write_atomic(&path, &serde_json::to_vec_pretty(&doc).expect("json"))
            .map_err(|e| FigureError::Io(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    }
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
