//! `noisegeom figure NAME`: one command per figure of the paper.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use clap::ValueEnum;
use noisegeom_figures::{Output, fig1, fig2a, fig3, fig4, load_config};

use crate::backend::Job;
use crate::env::env_info;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FigureName {
    Fig1,
    Fig2a,
    Fig3,
    Fig4,
}

impl FigureName {
    pub fn name(self) -> &'static str {
        match self {
            FigureName::Fig1 => "fig1",
            FigureName::Fig2a => "fig2a",
            FigureName::Fig3 => "fig3",
            FigureName::Fig4 => "fig4",
        }
    }
}

pub struct FigureJob {
    pub figure: FigureName,
    pub config: Option<PathBuf>,
    pub quick: bool,
    pub runs: Option<usize>,
    pub out: Option<PathBuf>,
}

impl FigureJob {
    fn config_path(&self) -> anyhow::Result<PathBuf> {
        let p = self.config.clone().unwrap_or_else(|| {
            PathBuf::from(format!("configs/figures/{}.toml", self.figure.name()))
        });
        anyhow::ensure!(
            p.is_file(),
            "figure config {} not found; run from the noisegeom folder or pass --config FILE",
            p.display()
        );
        Ok(p)
    }

    fn output(&self, backend: &str) -> Output {
        let name = self.figure.name();
        let dir = self.out.clone().unwrap_or_else(|| {
            PathBuf::from("results/figures").join(if self.quick {
                format!("{name}-quick")
            } else {
                name.to_string()
            })
        });
        Output {
            dir,
            name: name.to_string(),
            env: env_info(backend, 0, &std::env::args().collect::<Vec<_>>()),
        }
    }
}

impl Job for FigureJob {
    type Output = String;

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: &str) -> anyhow::Result<String> {
        let path = self.config_path()?;
        let out = self.output(backend);
        let mut progress = |s: &str| tracing::info!("{}: {s}", self.figure.name());
        let text = match self.figure {
            FigureName::Fig1 => {
                let mut c: fig1::Fig1Config = load_config(&path, self.quick)?;
                if let Some(r) = self.runs {
                    c.runs = r;
                }
                fig1::run::<B::InnerBackend>(&c, self.quick, &out, &device, &mut progress)?.1
            }
            FigureName::Fig2a => {
                let c: fig2a::Fig2aConfig = load_config(&path, self.quick)?;
                fig2a::run::<B::InnerBackend>(&c, self.quick, &out, &device, &mut progress)?.1
            }
            FigureName::Fig3 => {
                let mut c: fig3::Fig3Config = load_config(&path, self.quick)?;
                if let Some(r) = self.runs {
                    c.runs = r;
                }
                fig3::run(&c, self.quick, &out, &mut progress)?.1
            }
            FigureName::Fig4 => {
                let mut c: fig4::Fig4Config = load_config(&path, self.quick)?;
                if let Some(r) = self.runs {
                    c.runs = r;
                }
                fig4::run(&c, self.quick, &out, &mut progress)?.1
            }
        };
        Ok(format!(
            "{text}\nplots: {}.png, {}.svg",
            out.stem().display(),
            out.stem().display()
        ))
    }
}
