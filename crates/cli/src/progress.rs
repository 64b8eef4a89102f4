//! Terminal rendering of training progress: an indicatif bar with an ETA, and tracing lines
//! for evaluations (so logs stay readable when stderr is not a terminal).

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use noisegeom_train::{Eval, Observer, ProbeRecord};

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A bar for `len` units of work, with an ETA.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} (eta {{eta}}) {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

impl Observer for Progress {
    fn started(&mut self, first: u64, total: u64) {
        self.bar = bar(total, "steps");
        self.bar.set_position(first);
        if first > 0 {
            tracing::info!("resuming at step {first} of {total}");
        }
    }

    fn stepped(&mut self, step: u64, loss: f64, lr: f64) {
        self.bar.set_position(step);
        if step.is_multiple_of(10) {
            self.bar.set_message(format!("loss {loss:.4} lr {lr:.4}"));
        }
    }

    fn evaluated(&mut self, e: &Eval) {
        let acc = |a: Option<f64>| {
            a.map(|a| format!(" acc {:.2}%", 100.0 * a))
                .unwrap_or_default()
        };
        self.bar.suspend(|| {
            tracing::info!(
                "step {}: train loss {:.4}{} | test loss {:.4}{}",
                e.step,
                e.train.mse,
                acc(e.train.accuracy),
                e.test.mse,
                acc(e.test.accuracy)
            )
        });
    }

    fn probed(&mut self, p: &ProbeRecord) {
        let g = &p.geometry;
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        self.bar.suspend(|| {
            tracing::info!(
                "probe at step {}: μ {} | λmax(G) {} | λmax(H) {} | Tr G {:.4} | g_1 {}",
                p.step,
                g.mu,
                opt(g.lambda_max_g),
                opt(g.lambda_max_h),
                g.trace_g,
                g.g_k.first().map_or("-".to_string(), |r| r.to_string()),
            )
        });
    }

    fn checkpointed(&mut self, step: u64, path: &Path) {
        tracing::debug!("checkpoint at step {step}: {}", path.display());
    }

    fn estimated(&mut self, resources: &noisegeom_metrics::Resources) {
        tracing::info!("{} per probe", resources.summary());
    }
}
