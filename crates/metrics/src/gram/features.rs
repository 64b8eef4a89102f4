//! The per-sample features of the Gram: a tap that adds zero probe leaves after every
//! parametric layer, and one backward over c stacked copies of a chunk that reads every
//! (sample, output) signal at once.

use super::*;

pub(super) enum Record<B: Kernels> {
    Dense {
        input: Tensor<B, 2>,
        probe: Tensor<Ad<B>, 2>,
        bias: bool,
    },
    Conv {
        input: Tensor<B, 4>,
        probe: Tensor<Ad<B>, 4>,
        geom: ConvGeom,
        bias: bool,
    },
    Hadamard {
        input: Tensor<B, 2>,
        probe: Tensor<Ad<B>, 2>,
    },
    Norm {
        input: Tensor<B, 3>,
        probe: Tensor<Ad<B>, 3>,
    },
}

pub(super) struct GramTap<B: Kernels> {
    records: Vec<Record<B>>,
    /// Copies of the batch still to be made: > 1 until the first parametric layer, whose
    /// output is repeated (the forward up to it is the same for every copy).
    copies: usize,
}

impl<B: Kernels> GramTap<B> {
    fn copy<const D: usize>(&mut self, z: Tensor<Ad<B>, D>) -> Tensor<Ad<B>, D> {
        let copies = std::mem::replace(&mut self.copies, 1);
        if copies > 1 {
            z.repeat_dim(0, copies)
        } else {
            z
        }
    }
}

/// A zero leaf shaped like `z`: added after a layer, its gradient is the backprop signal there.
pub(super) fn zero_probe<B: Kernels, const D: usize>(z: &Tensor<Ad<B>, D>) -> Tensor<Ad<B>, D> {
    Tensor::zeros(z.dims(), &z.device()).require_grad()
}

impl<B: Kernels> Tap<Ad<B>> for GramTap<B> {
    fn dense(
        &mut self,
        input: &Tensor<Ad<B>, 2>,
        z: Tensor<Ad<B>, 2>,
        bias: bool,
    ) -> Tensor<Ad<B>, 2> {
        let z = self.copy(z);
        let probe = zero_probe(&z);
        self.records.push(Record::Dense {
            input: input.clone().inner(),
            probe: probe.clone(),
            bias,
        });
        z + probe
    }

    fn conv(
        &mut self,
        input: &Tensor<Ad<B>, 4>,
        z: Tensor<Ad<B>, 4>,
        geom: ConvGeom,
        bias: bool,
    ) -> Tensor<Ad<B>, 4> {
        let z = self.copy(z);
        let probe = zero_probe(&z);
        self.records.push(Record::Conv {
            input: input.clone().inner(),
            probe: probe.clone(),
            geom,
            bias,
        });
        z + probe
    }

    fn hadamard(&mut self, input: &Tensor<Ad<B>, 2>, z: Tensor<Ad<B>, 2>) -> Tensor<Ad<B>, 2> {
        let z = self.copy(z);
        let probe = zero_probe(&z);
        self.records.push(Record::Hadamard {
            input: input.clone().inner(),
            probe: probe.clone(),
        });
        z + probe
    }

    fn norm(&mut self, input: &Tensor<Ad<B>, 3>, z: Tensor<Ad<B>, 3>) -> Tensor<Ad<B>, 3> {
        let z = self.copy(z);
        let probe = zero_probe(&z);
        self.records.push(Record::Norm {
            input: input.clone().inner(),
            probe: probe.clone(),
        });
        z + probe
    }
}

/// What one chunk of samples contributes, per layer: either the two factors of the affine
/// identity, or materialised per-(sample, output) gradient rows.
pub(super) enum Feature<B: Kernels> {
    /// `a`: `[b, in (+1)]` layer inputs; `delta`: `[c·b, out]`, rows output-major (o·b + i).
    /// `units`: δ_{i,o} = e_o for every sample of the chunk (the output layer, checked
    /// exactly), so that between two such chunks δ_{i,o}·δ_{j,o2} = [o = o2] needs no product.
    /// `symmetric`: δ_{i,o} = D_i·u_o with D_i diagonal and u_o shared by all samples (the
    /// last hidden affine layer, when only an elementwise activation lies between it and an
    /// output layer whose signals are the selection: u_o is that layer's weight row o), so
    /// δ_{i,o}·δ_{j,o2} = Σ_k D_ik D_jk u_ok u_o2k is symmetric under o ↔ o2.
    Affine {
        a: Tensor<B, 2>,
        delta: Tensor<B, 2>,
        units: bool,
        symmetric: bool,
    },
    /// `[c·b, q]` gradient rows, output-major.
    Rows(Tensor<B, 2>),
}

impl<B: Kernels> Feature<B> {
    /// The same feature restricted to samples `t0..t0 + t` of a chunk of `b` (rows of the
    /// output-major factors are `o·b + i`).
    pub(super) fn samples(&self, b: usize, c: usize, t0: usize, t: usize) -> Self {
        let rows = |m: &Tensor<B, 2>| {
            if t == b {
                return m.clone();
            }
            let [_, q] = m.dims();
            m.clone()
                .reshape([c, b, q])
                .narrow(1, t0, t)
                .reshape([c * t, q])
        };
        match self {
            Feature::Affine {
                a,
                delta,
                units,
                symmetric,
            } => Feature::Affine {
                a: a.clone().narrow(0, t0, t),
                delta: rows(delta),
                units: *units,
                symmetric: *symmetric,
            },
            Feature::Rows(r) => Feature::Rows(rows(r)),
        }
    }
}

impl<B: Kernels> Feature<B> {
    /// Floats stored, all samples of the chunk together.
    pub(super) fn floats(&self) -> usize {
        match self {
            Feature::Affine { a, delta, .. } => {
                a.shape().num_elements() + delta.shape().num_elements()
            }
            Feature::Rows(r) => r.shape().num_elements(),
        }
    }
}

/// The one-hot selection `[c·b, c]` (row o·b + i is e_o): the cotangent that gives every
/// (sample, output) signal in one backward.
pub(super) fn selection(c: usize, b: usize) -> Vec<f64> {
    let mut sel = vec![0.0f64; c * b * c];
    for o in 0..c {
        for i in 0..b {
            sel[(o * b + i) * c + o] = 1.0;
        }
    }
    sel
}

/// Each parametric layer's per-sample features over samples `start..start + b`: for a
/// network of affine layers and activations only, written out ([`mlp_features`]); else one
/// forward (c copies) and one backward of Σ_{i,o} f_o(x_i)·[copy = o].
pub(super) fn chunk_features<B: Kernels>(
    ops: &ProbeOps<B>,
    start: usize,
    b: usize,
    late_copies: bool,
) -> Vec<Feature<B>> {
    let mut feats = match mlp_features(ops, start, b) {
        Some(feats) => feats,
        None => autodiff_features(ops, start, b, late_copies),
    };
    if let Some(l) = symmetric_layer(&ops.arch.stages)
        && matches!(feats.last(), Some(Feature::Affine { units: true, .. }))
        && let Some(Feature::Affine { symmetric, .. }) = feats.get_mut(l)
    {
        *symmetric = true;
    }
    feats
}

/// The features of a network whose stages are affine layers, each followed by at most one
/// activation, the last by none: one forward over the b samples records each layer's input
/// a_l and pre-activation z_l, and the backward is written out on c·b rows, δ_L = e_o and
/// δ_l = (δ_{l+1}·W_{l+1}) ⊙ σ'(z_l). Autodiff needs the c copies of the batch in the
/// forward as well (one graph row per cotangent), which repeats the forward past the first
/// layer c times. `None` for any other architecture.
pub(super) fn mlp_features<B: Kernels>(
    ops: &ProbeOps<B>,
    start: usize,
    b: usize,
) -> Option<Vec<Feature<B>>> {
    // Per affine layer, the activation that follows it.
    let mut acts: Vec<Option<Activation>> = Vec::new();
    for stage in &ops.arch.stages {
        match stage {
            Stage::Dense { .. } => acts.push(None),
            Stage::Act { activation } => match acts.last_mut() {
                Some(act @ None) => *act = Some(*activation),
                _ => return None,
            },
            _ => return None,
        }
    }
    if acts.last()?.is_some() {
        return None;
    }
    struct Record<B: Kernels> {
        inputs: Vec<(Tensor<B, 2>, bool)>,
        pre: Vec<Tensor<B, 2>>,
    }
    impl<B: Kernels> Tap<B> for Record<B> {
        fn dense(&mut self, input: &Tensor<B, 2>, z: Tensor<B, 2>, bias: bool) -> Tensor<B, 2> {
            self.inputs.push((input.clone(), bias));
            self.pre.push(z.clone());
            z
        }
    }
    let mut rec = Record {
        inputs: Vec::new(),
        pre: Vec::new(),
    };
    let net = ops.net();
    net.forward_with(ops.x.clone().narrow(0, start, b), &mut rec);
    let c = ops.c;
    let sel = selection(c, b);
    let last = acts.len() - 1;
    let mut deltas = vec![Tensor::<B, 2>::from_data(
        TensorData::new(sel, [c * b, c]),
        &ops.device,
    )];
    for l in (0..last).rev() {
        let Layer::Dense(next) = &net.layers[l + 1] else {
            unreachable!("affine layers only");
        };
        let g = deltas[0].clone().matmul(next.weight.val());
        deltas.insert(
            0,
            match acts[l] {
                None | Some(Activation::Identity) => g,
                // σ'(z_l) repeated for the c copies: burn-flex multiplies equal shapes in
                // place, and a broadcast [1, b, d] factor takes its slow strided path.
                Some(act) => g * act.slope(rec.pre[l].clone()).repeat_dim(0, c),
            },
        );
    }
    Some(
        rec.inputs
            .into_iter()
            .zip(deltas)
            .enumerate()
            .map(|(l, ((a, bias), delta))| Feature::Affine {
                a: with_ones(a, bias),
                delta,
                units: l == last,
                symmetric: false,
            })
            .collect(),
    )
}

/// `a` with a column of ones appended when the layer has a bias.
pub(super) fn with_ones<B: Kernels>(a: Tensor<B, 2>, bias: bool) -> Tensor<B, 2> {
    if bias {
        let ones = Tensor::<B, 2>::ones([a.dims()[0], 1], &a.device());
        Tensor::cat(vec![a, ones], 1)
    } else {
        a
    }
}

/// [`chunk_features`] through autodiff: probes on every parametric layer.
pub(super) fn autodiff_features<B: Kernels>(
    ops: &ProbeOps<B>,
    start: usize,
    b: usize,
    late_copies: bool,
) -> Vec<Feature<B>> {
    let _graph = autodiff_lock();
    let c = ops.c;
    let x = ops.x.clone().narrow(0, start, b);
    let x = if late_copies { x } else { x.repeat_dim(0, c) };
    let mut tap = GramTap {
        records: Vec::new(),
        copies: if late_copies { c } else { 1 },
    };
    // Differentiated once: the backend's first-order ops where it has them (on burn-flex,
    // the convolution's input gradient from host patches, not burn's transposed conv).
    let out = ops.net_frozen().forward_tapped(
        Tensor::<Ad<B>, 2>::from_inner(x),
        &mut tap,
        Pass::FirstOrder,
    );
    let sel = selection(c, b);
    let grads = (out
        * Tensor::<Ad<B>, 2>::from_data(TensorData::new(sel.clone(), [c * b, c]), &ops.device))
    .sum()
    .backward();
    let mut feats = Vec::with_capacity(tap.records.len());
    for rec in tap.records {
        feats.push(match rec {
            Record::Dense { input, probe, bias } => {
                let delta = probe.grad(&grads).expect("probe reached");
                let a = with_ones(input.narrow(0, 0, b), bias);
                // The output layer's signal is the selection itself (nothing follows it).
                let units = delta.dims() == [c * b, c] && to_host(delta.clone()) == sel;
                Feature::Affine {
                    a,
                    delta,
                    units,
                    symmetric: false,
                }
            }
            Record::Conv {
                input,
                probe,
                geom,
                bias,
            } => {
                let delta = probe.grad(&grads).expect("probe reached");
                let [rows, cout, h, w] = delta.dims();
                let delta = delta.reshape([c, b, cout, h * w]);
                // Patches of the first copy, [1, b, P, cin·k²], broadcast over the c copies
                // (rows are output-major, o·b + i) rather than repeated.
                let u = unfold4d(
                    input.narrow(0, 0, b),
                    [geom.kernel, geom.kernel],
                    UnfoldOptions::new([geom.stride; 2], [geom.padding; 2], [1, 1]),
                )
                .swap_dims(1, 2)
                .unsqueeze_dim::<4>(0);
                let gw = delta.clone().matmul(u); // [c, b, cout, cin·k²]
                let [_, _, _, q] = gw.dims();
                let mut parts = vec![gw.reshape([rows, cout * q])];
                if bias {
                    parts.push(delta.sum_dim(3).reshape([rows, cout]));
                }
                Feature::Rows(Tensor::cat(parts, 1))
            }
            Record::Hadamard { input, probe } => {
                let delta = probe.grad(&grads).expect("probe reached");
                Feature::Rows(input.narrow(0, 0, b).repeat_dim(0, c) * delta)
            }
            Record::Norm { input, probe } => {
                // γ's gradient row sums x̂ ⊙ δ over positions, β's sums δ.
                let delta = probe.grad(&grads).expect("probe reached");
                let [rows, ch, _] = delta.dims();
                let scale = (input.narrow(0, 0, b).repeat_dim(0, c) * delta.clone()).sum_dim(2);
                Feature::Rows(Tensor::cat(
                    vec![
                        scale.reshape([rows, ch]),
                        delta.sum_dim(2).reshape([rows, ch]),
                    ],
                    1,
                ))
            }
        });
    }
    feats
}

/// The parametric layer (its index among them) whose backprop signals are symmetric in the
/// outputs when the last layer's signals are the selection ([`Feature::Affine`]): the
/// second-to-last parametric layer, if it and the last are affine and only activations lie
/// between them.
pub(super) fn symmetric_layer(stages: &[Stage]) -> Option<usize> {
    let params: Vec<usize> = (0..stages.len())
        .filter(|&k| stages[k].is_parametric())
        .collect();
    let [.., prev, last] = params[..] else {
        return None;
    };
    let affine = |k: usize| matches!(stages[k], Stage::Dense { .. });
    let between = stages[prev + 1..last]
        .iter()
        .all(|s| matches!(s, Stage::Act { .. }));
    (affine(prev) && affine(last) && between).then_some(params.len() - 2)
}
