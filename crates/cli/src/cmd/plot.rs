//! `noisegeom plot RUN_DIR [RUN_DIR…]`.

use std::path::PathBuf;

use noisegeom_figures::runs::{RunLog, plot_runs};

pub fn plot(runs: &[PathBuf], out: Option<PathBuf>) -> anyhow::Result<String> {
    let logs = runs
        .iter()
        .map(|d| RunLog::read(d))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = out.unwrap_or_else(|| match runs {
        [one] => one.join("plots"),
        _ => PathBuf::from("plots"),
    });
    let name = match logs.as_slice() {
        [one] => one.name.clone(),
        _ => "compare".to_string(),
    };
    Ok(plot_runs(&logs, &dir.join(name))?)
}
