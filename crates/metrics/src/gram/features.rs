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
        None => match conv_net_features(ops, start, b) {
            Some(feats) => feats,
            None => autodiff_features(ops, start, b, late_copies),
        },
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

/// A convolution's per-(sample, output) gradient rows `[c·b, cout·cin·k² (+ cout)]`, output-
/// major, from its input `[b, cin, h, w]` and its signals `[c·b, cout, h', w']`: the patches
/// of the b samples, `[1, b, P, cin·k²]`, broadcast over the c outputs in one product.
pub(super) fn conv_rows<B: Kernels>(
    input: Tensor<B, 4>,
    delta: Tensor<B, 4>,
    geom: ConvGeom,
    bias: bool,
    c: usize,
) -> Feature<B> {
    let [rows, cout, h, w] = delta.dims();
    let b = rows / c;
    let delta = delta.reshape([c, b, cout, h * w]);
    let u = unfold4d(
        input,
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

/// The signal at a convolution's input from the signal at its output, `[r, cout, h', w']`
/// → `[r, cin, h, w]`: on host memory by [`noisegeom_kernels::conv::conv_input_grad`] when
/// `host`, else burn's transposed convolution.
fn conv_input_signal<B: Kernels>(
    delta: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    [h, w]: [usize; 2],
    geom: ConvGeom,
    host: bool,
) -> Tensor<B, 4> {
    let [r, cout, ho, wo] = delta.dims();
    let [_, cin, _, _] = weight.dims();
    let device = delta.device();
    if host {
        let s = noisegeom_kernels::conv::ConvShape {
            n: r,
            c_in: cin,
            h,
            w,
            c_out: cout,
            geom,
        };
        let (dz, wt) = (
            noisegeom_kernels::read(delta),
            noisegeom_kernels::read(weight),
        );
        let same = "signals and weights share the backend's float type";
        let dx = match dz.dtype {
            DType::F64 => TensorData::new(
                noisegeom_kernels::conv::conv_input_grad::<f64>(
                    dz.as_slice().expect(same),
                    wt.as_slice().expect(same),
                    s,
                ),
                [r, cin, h, w],
            ),
            _ => TensorData::new(
                noisegeom_kernels::conv::conv_input_grad::<f32>(
                    dz.as_slice().expect(same),
                    wt.as_slice().expect(same),
                    s,
                ),
                [r, cin, h, w],
            ),
        };
        return Tensor::from_data(dx, &device);
    }
    // The transposed convolution's output padding recovers the input size lost to the stride.
    let pad =
        |len: usize, out: usize| len - ((out - 1) * geom.stride + geom.kernel - 2 * geom.padding);
    conv_transpose2d(
        delta,
        weight,
        None,
        ConvTransposeOptions::new(
            [geom.stride; 2],
            [geom.padding; 2],
            [pad(h, ho), pad(w, wo)],
            [1, 1],
            1,
        ),
    )
}

/// The features of a network of convolutions and affine layers, each followed by at most
/// one activation, with one flatten between them and an affine last layer: one forward over
/// the b samples records each layer's input and pre-activation, and the backward is written
/// out on c·b rows (δ_L = e_o; an affine layer passes δ·W back, a convolution its transposed
/// convolution, an activation multiplies by σ'(z)). Autodiff would run the forward past the
/// first layer on the c copies as well. `None` for any other architecture.
pub(super) fn conv_net_features<B: Kernels>(
    ops: &ProbeOps<B>,
    start: usize,
    b: usize,
) -> Option<Vec<Feature<B>>> {
    let stages = &ops.arch.stages;
    let convs = stages
        .iter()
        .filter(|s| matches!(s, Stage::Conv { .. }))
        .count();
    let supported = stages.iter().enumerate().all(|(k, s)| match s {
        Stage::Dense { .. } | Stage::Conv { .. } | Stage::Flatten => true,
        Stage::Act { .. } => {
            k > 0 && matches!(stages[k - 1], Stage::Dense { .. } | Stage::Conv { .. })
        }
        _ => false,
    });
    if convs == 0 || !supported || !matches!(stages.last(), Some(Stage::Dense { .. })) {
        return None;
    }
    enum Rec<B: Kernels> {
        Dense(Tensor<B, 2>, Tensor<B, 2>, bool),
        Conv(Tensor<B, 4>, Tensor<B, 4>, ConvGeom, bool),
    }
    struct Record<B: Kernels>(Vec<Rec<B>>);
    impl<B: Kernels> Tap<B> for Record<B> {
        fn dense(&mut self, input: &Tensor<B, 2>, z: Tensor<B, 2>, bias: bool) -> Tensor<B, 2> {
            self.0.push(Rec::Dense(input.clone(), z.clone(), bias));
            z
        }
        fn conv(
            &mut self,
            input: &Tensor<B, 4>,
            z: Tensor<B, 4>,
            geom: ConvGeom,
            bias: bool,
        ) -> Tensor<B, 4> {
            self.0.push(Rec::Conv(input.clone(), z.clone(), geom, bias));
            z
        }
    }
    let net = ops.net();
    let mut rec = Record(Vec::new());
    net.forward_tapped(
        ops.x.clone().narrow(0, start, b),
        &mut rec,
        Pass::FirstOrder,
    );
    let (c, host) = (ops.c, ops.host_products);
    enum Signal<B: Kernels> {
        Flat(Tensor<B, 2>),
        Image(Tensor<B, 4>),
    }
    let sel = selection(c, b);
    let mut delta = Signal::Flat(Tensor::<B, 2>::from_data(
        TensorData::new(sel, [c * b, c]),
        &ops.device,
    ));
    let mut feats = Vec::with_capacity(rec.0.len());
    let mut li = rec.0.len();
    // Stages from the last: each activation applies the slope at the pre-activation of the
    // parametric layer just before it, which the loop reaches next.
    let mut slope: Option<Activation> = None;
    for stage in stages.iter().rev() {
        match stage {
            Stage::Act { activation } => slope = Some(*activation),
            Stage::Flatten => {
                let Signal::Flat(d) = delta else {
                    unreachable!("validated: flatten takes an image")
                };
                let Some(Rec::Conv(_, z, ..)) = rec.0.get(li - 1) else {
                    unreachable!("validated: a flatten follows a convolution")
                };
                let [_, ch, h, w] = z.dims();
                delta = Signal::Image(d.reshape([c * b, ch, h, w]));
            }
            Stage::Dense { .. } | Stage::Conv { .. } => {
                li -= 1;
                let first = li == 0;
                delta = match (rec.0.pop().expect("one record per layer"), delta) {
                    (Rec::Dense(a, z, bias), Signal::Flat(d)) => {
                        let d = match slope.take() {
                            Some(act) => d * act.slope(z).repeat_dim(0, c),
                            None => d,
                        };
                        let Layer::Dense(l) = &net.layers[li] else {
                            unreachable!("layers follow stages")
                        };
                        let back = (!first).then(|| d.clone().matmul(l.weight.val()));
                        feats.push(Feature::Affine {
                            a: with_ones(a, bias),
                            delta: d,
                            units: feats.is_empty(),
                            symmetric: false,
                        });
                        Signal::Flat(back.unwrap_or_else(|| Tensor::zeros([1, 1], &ops.device)))
                    }
                    (Rec::Conv(a, z, geom, bias), Signal::Image(d)) => {
                        let d = match slope.take() {
                            Some(act) => d * act.slope(z).repeat_dim(0, c),
                            None => d,
                        };
                        let Layer::Conv(l) = &net.layers[li] else {
                            unreachable!("layers follow stages")
                        };
                        let [_, _, h, w] = a.dims();
                        let back = (!first).then(|| {
                            conv_input_signal(d.clone(), l.weight.val(), [h, w], geom, host)
                        });
                        feats.push(conv_rows(a, d, geom, bias, c));
                        Signal::Image(
                            back.unwrap_or_else(|| Tensor::zeros([1, 1, 1, 1], &ops.device)),
                        )
                    }
                    _ => unreachable!("validated: dense on vectors, conv on images"),
                };
            }
            _ => unreachable!("validated stages"),
        }
    }
    feats.reverse();
    Some(feats)
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
                conv_rows(input.narrow(0, 0, b), delta, geom, bias, c)
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
