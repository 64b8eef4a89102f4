//! Every shipped config parses (unknown keys are errors), full and `--quick`.

use std::path::Path;

use noisegeom_figures::{fig1, fig2a, fig3, fig4, figure_of, load_config};

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
    let named = |f: &str| Some(f.to_string());
    for quick in [false, true] {
        let p = |f: &str| dir.join(format!("{f}.toml"));
        assert_eq!(
            load_config::<fig1::Fig1Config>(&p("fig1"), quick)
                .unwrap()
                .1,
            named("fig1")
        );
        assert_eq!(
            load_config::<fig2a::Fig2aConfig>(&p("fig2a"), quick)
                .unwrap()
                .1,
            named("fig2a")
        );
        assert_eq!(
            load_config::<fig3::Fig3Config>(&p("fig3"), quick)
                .unwrap()
                .1,
            named("fig3")
        );
        assert_eq!(
            load_config::<fig4::Fig4Config>(&p("fig4"), quick)
                .unwrap()
                .1,
            named("fig4")
        );
    }
    for f in ["fig1", "fig2a", "fig3", "fig4"] {
        assert_eq!(figure_of(&dir.join(format!("{f}.toml"))).unwrap(), f);
    }
}
