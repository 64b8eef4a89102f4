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
    for quick in [false, true] {
        let p = |f: &str| dir.join(format!("{f}.toml"));
        load_config::<fig1::Fig1Config>(&p("fig1"), "fig1", quick).unwrap();
        load_config::<fig2a::Fig2aConfig>(&p("fig2a"), "fig2a", quick).unwrap();
        load_config::<fig3::Fig3Config>(&p("fig3"), "fig3", quick).unwrap();
        load_config::<fig4::Fig4Config>(&p("fig4"), "fig4", quick).unwrap();
    }
    for f in ["fig1", "fig2a", "fig3", "fig4"] {
        assert_eq!(figure_of(&dir.join(format!("{f}.toml"))).unwrap(), f);
    }
    // Another figure's config is refused by its `figure` key, not by a stray field.
    let e = load_config::<fig1::Fig1Config>(&dir.join("fig4.toml"), "fig1", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`figure` key is fig4, not fig1"), "{e}");
}
