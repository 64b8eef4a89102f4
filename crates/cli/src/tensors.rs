//! Tensors from files a user brings: a PyTorch `state_dict` saved as safetensors (with an
//! optional name map), and probe sets as safetensors or a pair of `.npy` files.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use noisegeom_data::{Dataset, Provenance, Targets};
use noisegeom_models::NamedTensor;

/// A state_dict for `--weights`: the tensors of a safetensors file but its `probe.*` ones
/// (`export` writes the probe set into the same file), renamed by `--name-map` if given.
pub fn read_state_dict(
    path: &Path,
    name_map: Option<&Path>,
) -> anyhow::Result<BTreeMap<String, NamedTensor>> {
    let mut tensors = read_safetensors(path)?;
    tensors.retain(|name, _| !name.starts_with("probe."));
    match name_map {
        Some(map) => apply_name_map(tensors, map),
        None => Ok(tensors),
    }
}

/// Every tensor of a safetensors file, converted to f64 (f16, bf16, f32, f64 and integer
/// tensors are accepted).
pub fn read_safetensors(path: &Path) -> anyhow::Result<BTreeMap<String, NamedTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a safetensors file ({e}); save the state_dict with safetensors.torch.save_file",
            path.display()
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let values = to_f64(view.dtype(), view.data())
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        out.insert(
            name,
            NamedTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

fn to_f64(dtype: safetensors::Dtype, data: &[u8]) -> anyhow::Result<Vec<f64>> {
    use safetensors::Dtype::*;
    fn each<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        data.chunks_exact(N)
            .map(|c| f(c.try_into().expect("N bytes")))
            .collect()
    }
    Ok(match dtype {
        F64 => each(data, f64::from_le_bytes),
        F32 => each(data, |b| f32::from_le_bytes(b) as f64),
        F16 => each(data, |b| half::f16::from_le_bytes(b).to_f64()),
        BF16 => each(data, |b| half::bf16::from_le_bytes(b).to_f64()),
        I64 => each(data, |b| i64::from_le_bytes(b) as f64),
        I32 => each(data, |b| i32::from_le_bytes(b) as f64),
        U8 => each(data, |b: [u8; 1]| b[0] as f64),
        other => bail!("dtype {other:?} is not supported; save it as f16, bf16, f32 or f64"),
    })
}

/// Renames tensors by a name map (a TOML or JSON table, external name → noisegeom name).
pub fn apply_name_map(
    mut tensors: BTreeMap<String, NamedTensor>,
    path: &Path,
) -> anyhow::Result<BTreeMap<String, NamedTensor>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let map: BTreeMap<String, String> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{e}"))
    } else {
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{e}"))
    }
    .with_context(|| {
        format!(
            "--name-map {}: give a table of \"external name\" = \"noisegeom name\" strings",
            path.display()
        )
    })?;
    for (from, to) in map {
        let t = tensors.remove(&from).with_context(|| {
            format!(
                "--name-map {}: `{from}` is not a tensor of the weights file",
                path.display()
            )
        })?;
        ensure!(
            tensors.insert(to.clone(), t).is_none(),
            "--name-map {}: `{from}` is mapped to `{to}`, which the file already holds",
            path.display()
        );
    }
    Ok(tensors)
}

/// A probe set as read from files: inputs `x` `[n, *input_shape]` and either targets `y`
/// `[n, c]` or integer `labels` `[n]`; `origin` names the files for errors.
pub struct ProbeTensors {
    pub x: NamedTensor,
    pub y: Option<NamedTensor>,
    pub labels: Option<NamedTensor>,
    pub origin: String,
}

/// The probe set of `t` (labels made one-hot over `outputs` classes). Inputs are used as
/// given.
pub fn probe_dataset(
    t: ProbeTensors,
    input_shape: &[usize],
    outputs: usize,
) -> anyhow::Result<Dataset> {
    let ProbeTensors {
        x,
        y,
        labels,
        origin,
    } = t;
    let origin = origin.as_str();
    let n = *x.shape.first().unwrap_or(&0);
    ensure!(
        n >= 1 && x.shape[1..] == *input_shape,
        "{origin}: x has shape {:?}, but the model takes [n, {}] with n ≥ 1",
        x.shape,
        input_shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let finite = |t: &NamedTensor, what: &str| -> anyhow::Result<()> {
        if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{origin}: {what} holds a non-finite value ({}) at flat index {i}",
                t.values[i]
            );
        }
        Ok(())
    };
    finite(&x, "x")?;
    let targets = match (y, labels) {
        (Some(y), None) => {
            ensure!(
                y.shape == [n, outputs],
                "{origin}: y has shape {:?}, but the model needs [{n}, {outputs}] (n samples, c outputs)",
                y.shape
            );
            finite(&y, "y")?;
            Targets::Regression {
                values: y.values.iter().map(|&v| v as f32).collect(),
                dim: outputs,
            }
        }
        (None, Some(l)) => {
            ensure!(
                l.shape == [n],
                "{origin}: labels has shape {:?}, but x holds {n} samples; give labels of shape [{n}]",
                l.shape
            );
            ensure!(
                outputs <= 256,
                "{origin}: labels are for at most 256 classes, the model has {outputs} outputs; give one-hot y instead"
            );
            let labels = l
                .values
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    if v.fract() == 0.0 && (0.0..outputs as f64).contains(&v) {
                        Ok(v as u8)
                    } else {
                        bail!(
                            "{origin}: label {v} of sample {i} is not a class in 0..{outputs} (the model's outputs)"
                        )
                    }
                })
                .collect::<anyhow::Result<Vec<u8>>>()?;
            Targets::Classes {
                labels,
                num_classes: outputs,
            }
        }
        (Some(_), Some(_)) => bail!("{origin}: holds both y and labels; keep one"),
        (None, None) => bail!("{origin}: holds no targets; add y [n, c] or labels [n]"),
    };
    Ok(Dataset {
        provenance: Provenance {
            name: "probe-file".into(),
            split: "given".into(),
            source: origin.to_string(),
            synthetic: false,
        },
        input_shape: input_shape.to_vec(),
        inputs: x.values.iter().map(|&v| v as f32).collect(),
        targets,
    })
}

/// The probe tensors of a safetensors file: `x` with `y` or `labels` (or `export`'s
/// `probe.x` and `probe.y`).
pub fn probe_tensors(path: &Path) -> anyhow::Result<ProbeTensors> {
    let mut t = read_safetensors(path)?;
    let mut take = |names: [&str; 2]| names.iter().find_map(|n| t.remove(*n));
    let x = take(["x", "probe.x"]).with_context(|| {
        format!(
            "--probe {}: holds no tensor `x`; save the inputs as x [n, *input_shape]",
            path.display()
        )
    })?;
    Ok(ProbeTensors {
        x,
        y: take(["y", "probe.y"]),
        labels: take(["labels", "probe.labels"]),
        origin: format!("--probe {}", path.display()),
    })
}

/// The probe tensors of a pair of `.npy` files: inputs, and targets `[n, c]` or labels `[n]`.
pub fn probe_npy(x_path: &Path, y_path: &Path) -> anyhow::Result<ProbeTensors> {
    let targets = read_npy(y_path)?;
    let (y, labels) = if targets.shape.len() == 1 {
        (None, Some(targets))
    } else {
        (Some(targets), None)
    };
    Ok(ProbeTensors {
        x: read_npy(x_path)?,
        y,
        labels,
        origin: format!(
            "--probe-x {} --probe-y {}",
            x_path.display(),
            y_path.display()
        ),
    })
}

/// A `.npy` array (little-endian f16, f32, f64, i32, i64 or u8, C order), as f64.
pub fn read_npy(path: &Path) -> anyhow::Result<NamedTensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{} is not a readable .npy file: {why}", path.display());
    ensure!(
        bytes.starts_with(b"\x93NUMPY") && bytes.len() >= 10,
        bad("no NUMPY magic")
    );
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
        _ => return Err(bad("unknown format version")),
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let field = |key: &str| {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\'')?.split('\'').next())
        .ok_or_else(|| bad("no descr"))?;
    ensure!(
        field("fortran_order").is_some_and(|s| s.starts_with("False")),
        bad("Fortran order; save it with np.ascontiguousarray")
    );
    let shape: Vec<usize> = field("shape")
        .and_then(|s| s.strip_prefix('(')?.split(')').next())
        .ok_or_else(|| bad("no shape"))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<anyhow::Result<_>>()?;
    use safetensors::Dtype::*;
    let dtype = match descr {
        "<f2" => F16,
        "<f4" => F32,
        "<f8" => F64,
        "<i4" => I32,
        "<i8" => I64,
        "|u1" | "<u1" => U8,
        other => {
            return Err(bad(&format!(
                "dtype {other} is not supported; save it as float32, float64 or int64"
            )));
        }
    };
    let data = &bytes[start + len..];
    let width = dtype.bitsize() / 8;
    let count = shape
        .iter()
        .try_fold(width, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(&format!("shape {shape:?} is too large")))?
        / width;
    ensure!(
        data.len() == count * width,
        bad(&format!(
            "it holds {} bytes of data for shape {shape:?} ({} expected)",
            data.len(),
            count * width
        ))
    );
    Ok(NamedTensor {
        shape,
        values: to_f64(dtype, data)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A readable file: every tensor holds as many values as its shape says.
    fn consistent(t: &BTreeMap<String, NamedTensor>) -> bool {
        t.values()
            .all(|t| t.values.len() == t.shape.iter().product::<usize>())
    }

    /// Seeded corruptions (truncations, flipped bytes, huge declared sizes) of a safetensors
    /// state_dict and of a .npy probe file: a truncation is an error, anything else an error
    /// or a consistent file; nothing panics or allocates a declared size.
    #[test]
    fn fuzzed_weights_and_probe_files_fail_cleanly() {
        use safetensors::tensor::{Dtype, TensorView};
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = noisegeom_data::seeded_rng(0, "fuzz-tensors");
        let mut next = |bound: usize| rand::RngExt::random_range(&mut rng, 0..bound);
        let w: Vec<u8> = (0..24u16)
            .flat_map(|v| half::f16::from_f32(v as f32).to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..4).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let views = vec![
            (
                "0.weight",
                TensorView::new(Dtype::F16, vec![4, 6], &w).unwrap(),
            ),
            ("0.bias", TensorView::new(Dtype::F32, vec![4], &b).unwrap()),
        ];
        let st = safetensors::serialize(views, None).unwrap();
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
        let header = format!("{header:<53}\n");
        npy.extend((header.len() as u16).to_le_bytes());
        npy.extend(header.as_bytes());
        npy.extend((0..12).flat_map(|v| (v as f32).to_le_bytes()));
        let path = tmp.path().join("f");
        for (name, good) in [("safetensors", &st), ("npy", &npy)] {
            for case in 0..150 {
                let mut bytes = good.clone();
                let (kind, at) = (case % 3, next(good.len()));
                match kind {
                    0 => bytes.truncate(at),
                    1 => bytes[at] ^= 1 << next(8),
                    // A header length declared as 2⁶⁴ − 1, or a dimension of 10¹⁹.
                    _ if name == "safetensors" => bytes[..8].copy_from_slice(&[0xff; 8]),
                    _ => {
                        let h = String::from_utf8_lossy(&bytes)
                            .replace("(3, 4)", "(9999999999999999999, 4)");
                        bytes = h.into_bytes();
                    }
                }
                std::fs::write(&path, &bytes).unwrap();
                let what = format!("{name} case {case} (kind {kind}, byte {at})");
                let got = if name == "npy" {
                    read_npy(&path).map(|t| BTreeMap::from([("x".to_string(), t)]))
                } else {
                    read_safetensors(&path)
                };
                match (kind, got) {
                    (0, got) => assert!(got.is_err(), "{what}"),
                    (_, Ok(t)) => assert!(consistent(&t), "{what}"),
                    (_, Err(_)) => {}
                }
            }
        }
    }
}
