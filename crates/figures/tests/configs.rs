//! Every shipped config parses (unknown keys are errors), full and `--quick`.

use std::path::Path;

use noisegeom_figures::{fig1, fig2a, fig3, fig4, load_config};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn experiment_configs_parse() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            noisegeom_train::ExperimentConfig::from_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 6, "found {n} configs");
}

#[test]
fn figure_configs_parse() {
    let dir = root().join("configs/figures");
    for quick in [false, true] {
        load_config::<fig1::Fig1Config>(&dir.join("fig1.toml"), quick).unwrap();
        load_config::<fig2a::Fig2aConfig>(&dir.join("fig2a.toml"), quick).unwrap();
        load_config::<fig3::Fig3Config>(&dir.join("fig3.toml"), quick).unwrap();
        load_config::<fig4::Fig4Config>(&dir.join("fig4.toml"), quick).unwrap();
    }
}
