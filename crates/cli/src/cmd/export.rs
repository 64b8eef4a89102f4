//! `noisegeom export`: θ and the probe set as safetensors, in the names and layouts that
//! `measure --weights --probe` (and PyTorch) read.

use std::path::PathBuf;

use anyhow::Context;
use noisegeom_data::Dataset;
use noisegeom_kernels::AutodiffKernels;

use crate::backend::Job;
use crate::cmd::source::{Probe, ProbeSource, Source};

pub struct ExportJob {
    pub source: ProbeSource,
    pub out: PathBuf,
}

impl Job for ExportJob {
    type Output = String;

    fn run<B: AutodiffKernels>(self, device: B::Device, _backend: &str) -> anyhow::Result<String> {
        let (
            src,
            Probe {
                set: probe,
                indices,
                ..
            },
        ) = self.source.load::<B>(&device)?;
        let bytes = export_safetensors(&src, &probe, &indices)?;
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        noisegeom_train::fsio::write_atomic(&self.out, &bytes)
            .with_context(|| format!("cannot write {}", self.out.display()))?;
        Ok(format!(
            "wrote {} ({} parameters, {} probe samples); tensor names and layouts are listed in its metadata",
            self.out.display(),
            src.theta.len(),
            probe.len()
        ))
    }
}

/// θ (`torch.nn.Sequential` names and PyTorch layouts: Linear `[out, in]`, Conv2d `[out, in, kh, kw]`;
/// f32, or f64 where θ is not f32-exact), fixed tensors,
/// the probe inputs `[n, *input_shape]` (after normalisation), targets `[n, c]` and the probe
/// indices into the training set, as safetensors. The metadata holds the architecture and
/// the loss convention as JSON.
pub fn export_safetensors(
    src: &Source,
    probe: &Dataset,
    indices: &[usize],
) -> anyhow::Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    // f32 when every value is one (θ trained in f32 always is), so nothing is rounded.
    let exact_f32 = src.theta.iter().all(|&v| (v as f32) as f64 == v);
    for (e, values) in src.arch.state_values(&src.theta) {
        let (dtype, bytes) = if exact_f32 || !e.trained {
            (
                Dtype::F32,
                values
                    .iter()
                    .flat_map(|&v| (v as f32).to_le_bytes())
                    .collect(),
            )
        } else {
            (
                Dtype::F64,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        };
        owned.push((e.name, dtype, e.shape, bytes));
    }
    let mut xshape = vec![probe.len()];
    xshape.extend(&probe.input_shape);
    owned.push((
        "probe.x".into(),
        Dtype::F32,
        xshape,
        probe.inputs.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ));
    owned.push((
        "probe.y".into(),
        Dtype::F32,
        vec![probe.len(), probe.num_outputs()],
        probe
            .target_matrix()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    ));
    owned.push((
        "probe.indices".into(),
        Dtype::I64,
        vec![indices.len()],
        indices
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect(),
    ));
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        "noisegeom_arch".to_string(),
        serde_json::to_string(&src.arch)?,
    );
    meta.insert(
        "noisegeom_model".to_string(),
        serde_json::to_string(&src.model)?,
    );
    meta.insert("at".to_string(), src.at.clone());
    meta.insert(
        "layout".to_string(),
        "torch.nn.Sequential names: I.weight / I.bias belong to module I of the layer list (I.J inside residual block I); dense weights are [out, in] (torch.nn.Linear), conv weights [out, in, kh, kw] (torch.nn.Conv2d, stride/padding in the arch); a fixed layer's weight and a BatchNorm's running statistics are included; probe.x is NCHW for images; `noisegeom measure --weights FILE --probe FILE` reads this file back".to_string(),
    );
    meta.insert(
        "loss".to_string(),
        "L = 1/(2n) sum_i ||f(x_i) - y_i||^2 over probe.x, probe.y".to_string(),
    );
    Ok(safetensors::serialize(views, Some(meta))?)
}
