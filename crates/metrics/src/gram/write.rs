//! Writing K: [`gram`] stores the rows, sample-major, and mirrors them below the diagonal.

use super::*;

/// Computes K over the probe set of `ops`, `chunk` samples at a time. Fails with a clear
/// message if the stored per-sample features would exceed `max_bytes`.
pub fn gram<B: Kernels>(
    ops: &ProbeOps<B>,
    chunk: usize,
    max_bytes: usize,
) -> Result<Gram, GeometryError> {
    gram_tiled(ops, chunk, TILE, max_bytes)
}

/// [`gram`] with the host tile size given: the samples of each chunk are paired `tile` at a
/// time ([`for_each_tile_pair`]), and each output's rows are written into K row by row
/// (contiguous writes); the lower triangle by a blocked transpose, or, within a diagonal
/// pair, from each output's blocks held for it.
pub fn gram_tiled<B: Kernels>(
    ops: &ProbeOps<B>,
    chunk: usize,
    tile: usize,
    max_bytes: usize,
) -> Result<Gram, GeometryError> {
    let (n, c) = (ops.n, ops.c);
    let mut writer = GramWriter {
        c,
        dim: n * c,
        k: vec![0.0; n * c * n * c],
        blocks: Vec::new(),
    };
    for_each_tile_pair(
        ops,
        chunk,
        tile,
        FeatureBudget::strict(max_bytes),
        &mut writer,
    )?;
    Ok(Gram { n, c, k: writer.k })
}

/// Writes K from the visited rows ([`gram_tiled`]).
pub(super) struct GramWriter {
    c: usize,
    dim: usize,
    k: Vec<f64>,
    /// A diagonal pair's blocks (o, o2 > o) of the current output, `[bi, bj]` each.
    blocks: Vec<f64>,
}

impl PairVisitor for GramWriter {
    fn output(&mut self, r: &OutputRows<'_>) {
        let (dim, c, o, o0) = (self.dim, r.c, r.o, r.o0());
        let (si, bi, sj, bj) = (r.rows.start, r.rows.len(), r.cols.start, r.cols.len());
        let diag = r.diag;
        let block = bi * bj;
        self.blocks.resize(if diag { c * block } else { 0 }, 0.0);
        // Rows (si+i, o) of K, columns (sj+j, o2): contiguous writes, samples in parallel;
        // on the diagonal, each row is also kept in its block, for the mirror image below.
        let mut held: Vec<Vec<&mut [f64]>> = (0..bi).map(|_| Vec::new()).collect();
        for b in self.blocks.chunks_exact_mut(block.max(1)) {
            for (h, row) in held.iter_mut().zip(b.chunks_exact_mut(bj)) {
                h.push(row);
            }
        }
        self.k[si * c * dim..(si + bi) * c * dim]
            .par_chunks_mut(c * dim)
            .zip(held)
            .enumerate()
            .for_each(|(i, (rows, mut held))| {
                let row = &mut rows[o * dim..(o + 1) * dim][sj * c..(sj + bj) * c];
                let mut buf = vec![0.0; bj];
                for o2 in o0..c {
                    r.row_into(o2, i, &mut buf);
                    for (j, v) in buf.iter().enumerate() {
                        row[j * c + o2] = *v;
                    }
                    if diag && o2 > o {
                        held[o2].copy_from_slice(&buf);
                    }
                }
            });
        if diag {
            // K[(si+j, o2), (si+i, o)] = K[(si+i, o), (si+j, o2)] for o2 > o: rows of samples j
            // in parallel.
            let blocks = &self.blocks;
            self.k[si * c * dim..(si + bi) * c * dim]
                .par_chunks_mut(c * dim)
                .enumerate()
                .for_each(|(j, rows)| {
                    for o2 in o + 1..c {
                        let row = &mut rows[o2 * dim..(o2 + 1) * dim][si * c..(si + bi) * c];
                        let b = &blocks[o2 * block..(o2 + 1) * block];
                        for i in 0..bi {
                            row[i * c + o] = b[i * bj + j];
                        }
                    }
                });
        }
    }

    fn end_pair(&mut self, rows: Range<usize>, cols: Range<usize>, diag: bool) {
        let c = self.c;
        if !diag {
            mirror(
                &mut self.k,
                self.dim,
                rows.start * c..rows.end * c,
                cols.start * c..cols.end * c,
            );
        }
    }
}

/// Copies the block `rows × cols` of the row-major `dim × dim` matrix `k` to its transposed
/// position (`cols` lie below `rows`), in square tiles so that both sides stay in cache;
/// tiles of destination rows in parallel.
pub(super) fn mirror(k: &mut [f64], dim: usize, rows: Range<usize>, cols: Range<usize>) {
    const T: usize = 32;
    debug_assert!(rows.end <= cols.start, "the block lies above the diagonal");
    let (src, dst) = k.split_at_mut(cols.start * dim);
    dst[..cols.len() * dim]
        .par_chunks_mut(T * dim)
        .enumerate()
        .for_each(|(t, dst)| {
            let col0 = cols.start + t * T;
            for r0 in rows.clone().step_by(T) {
                for (dc, drow) in dst.chunks_exact_mut(dim).enumerate() {
                    for r in r0..(r0 + T).min(rows.end) {
                        drow[r] = src[r * dim + col0 + dc];
                    }
                }
            }
        });
}
