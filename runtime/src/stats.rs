//! Monitor statistics computed on the host from whole buffers.
//!
//! Input: f64 copies of buffers and their shapes. Output: one number per monitor.
//! Invariants: pure functions of their inputs (a monitor never changes the circuit); no
//! panics on any input (empty or non-finite data gives NaN).

/// Which statistic a monitor reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Stat {
    /// Mean over the batch of the per-sample angle (degrees) between two `[nb, cols]` buffers.
    Angle { a: usize, b: usize, cols: usize },
    /// Mean over the batch of a `[nb, 1]` buffer.
    Mean { buf: usize },
    /// (‖W_sym‖ − ‖W_skew‖)/(‖W_sym‖ + ‖W_skew‖) of a square `[n, n]` buffer.
    Symmetry { buf: usize, n: usize },
    /// Largest |eigenvalue| of a square `[n, n]` buffer.
    SpectralRadius { buf: usize, n: usize },
    /// Effective rank of a `[rows, cols]` buffer.
    EffectiveRank { buf: usize, rows: usize, cols: usize },
    /// A histogram of the first `len` values, drawn at the end of the run (no scalar value).
    Histogram { buf: usize, len: usize },
}

/// Angle in degrees between two vectors; NaN if either is zero.
pub fn angle_deg(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return f64::NAN;
    }
    (dot / (na * nb)).clamp(-1.0, 1.0).acos().to_degrees()
}

/// Mean of the per-row angles of two `[rows, cols]` matrices, skipping rows where either is
/// zero (NaN when all are).
pub fn mean_row_angle(a: &[f64], b: &[f64], rows: usize, cols: usize) -> f64 {
    let mut sum = 0.0;
    let mut n = 0;
    for r in 0..rows {
        let x = angle_deg(&a[r * cols..(r + 1) * cols], &b[r * cols..(r + 1) * cols]);
        if x.is_finite() {
            sum += x;
            n += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// The symmetry metric of a square matrix: +1 symmetric, −1 antisymmetric.
pub fn symmetry(w: &[f64], n: usize) -> f64 {
    let (mut sym, mut skew) = (0.0, 0.0);
    for i in 0..n {
        for j in 0..n {
            let (a, b) = (w[i * n + j], w[j * n + i]);
            sym += ((a + b) / 2.0).powi(2);
            skew += ((a - b) / 2.0).powi(2);
        }
    }
    let (s, k) = (sym.sqrt(), skew.sqrt());
    if s + k == 0.0 {
        return f64::NAN;
    }
    (s - k) / (s + k)
}

/// Spectral radius of a square matrix by Gelfand's formula, ρ = lim ‖A^k‖^{1/k}, with
/// k = 2^m reached by repeated squaring (rescaled each time to stay finite). The estimate is
/// an upper bound that converges as C^{1/k}; m = 24 puts it within about 1e-6 relative for
/// well-conditioned eigenbases.
pub fn spectral_radius(w: &[f64], n: usize) -> f64 {
    if n == 0 || w.len() < n * n || w.iter().any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let mut a = w[..n * n].to_vec();
    let mut log_scale = 0.0f64; // log of the factor divided out so far, per unit power
    let mut k = 1.0f64;
    for _ in 0..24 {
        let norm = frob(&a);
        if norm == 0.0 {
            return 0.0;
        }
        // Normalise: A ← A/‖A‖ and remember ‖A‖^{1/k} in the log.
        log_scale += norm.ln() / k;
        a.iter_mut().for_each(|x| *x /= norm);
        a = matmul(&a, &a, n);
        k *= 2.0;
    }
    let norm = frob(&a);
    if norm == 0.0 {
        return 0.0;
    }
    (log_scale + norm.ln() / k).exp()
}

/// Effective rank (Roy & Vetterli 2007): exp of the entropy of the singular values
/// normalised to sum 1. Singular values come from the eigenvalues of the smaller Gram matrix
/// (cyclic Jacobi).
pub fn effective_rank(w: &[f64], rows: usize, cols: usize) -> f64 {
    if rows == 0 || cols == 0 || w.len() < rows * cols || w.iter().any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let (n, k, by_rows) = if rows <= cols { (rows, cols, true) } else { (cols, rows, false) };
    let at = |i: usize, j: usize| if by_rows { w[i * cols + j] } else { w[j * cols + i] };
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let s: f64 = (0..k).map(|t| at(i, t) * at(j, t)).sum();
            g[i * n + j] = s;
            g[j * n + i] = s;
        }
    }
    let eig = jacobi_eigenvalues(&mut g, n);
    let sv: Vec<f64> = eig.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let total: f64 = sv.iter().sum();
    if total == 0.0 {
        return 0.0;
    }
    let h: f64 = sv.iter().map(|s| s / total).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    h.exp()
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations (destroys `a`).
fn jacobi_eigenvalues(a: &mut [f64], n: usize) -> Vec<f64> {
    for _sweep in 0..60 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * n + j].powi(2)).sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-24 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..n {
                    let (arp, arq) = (a[r * n + p], a[r * n + q]);
                    a[r * n + p] = c * arp - s * arq;
                    a[r * n + q] = s * arp + c * arq;
                }
                for r in 0..n {
                    let (apr, aqr) = (a[p * n + r], a[q * n + r]);
                    a[p * n + r] = c * apr - s * aqr;
                    a[q * n + r] = s * apr + c * aqr;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

fn frob(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angles() {
        assert!((angle_deg(&[1.0, 0.0], &[0.0, 2.0]) - 90.0).abs() < 1e-12);
        assert!(angle_deg(&[1.0, 1.0], &[2.0, 2.0]).abs() < 1e-5);
        assert!(angle_deg(&[0.0, 0.0], &[1.0, 0.0]).is_nan());
        let m = mean_row_angle(&[1.0, 0.0, 1.0, 0.0], &[0.0, 1.0, 1.0, 0.0], 2, 2);
        assert!((m - 45.0).abs() < 1e-9);
    }

    #[test]
    fn symmetry_extremes() {
        assert!((symmetry(&[1.0, 2.0, 2.0, 3.0], 2) - 1.0).abs() < 1e-12);
        assert!((symmetry(&[0.0, 2.0, -2.0, 0.0], 2) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn effective_rank_of_known_matrices() {
        // Identity 4x4: four equal singular values, rank 4.
        let mut id = vec![0.0; 16];
        for i in 0..4 {
            id[i * 4 + i] = 1.0;
        }
        assert!((effective_rank(&id, 4, 4) - 4.0).abs() < 1e-9);
        // Rank one: an outer product.
        let r1: Vec<f64> = (0..3).flat_map(|i| (0..5).map(move |j| (i + 1) as f64 * (j as f64 - 2.0))).collect();
        assert!((effective_rank(&r1, 3, 5) - 1.0).abs() < 1e-6);
        // Singular values 2 and 1 (diagonal 2x3): p = (2/3, 1/3).
        let d = [2.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let want = (-(2.0f64 / 3.0) * (2.0f64 / 3.0).ln() - (1.0 / 3.0) * (1.0f64 / 3.0).ln()).exp();
        assert!((effective_rank(&d, 2, 3) - want).abs() < 1e-9);
        // Its transpose (3x2) has the same singular values.
        assert!((effective_rank(&[2.0, 0.0, 0.0, 1.0, 0.0, 0.0], 3, 2) - want).abs() < 1e-9);
    }

    #[test]
    fn spectral_radius_of_known_matrices() {
        // Rotation by 90° scaled by 2: eigenvalues ±2i, radius 2 (power iteration fails here).
        let r = spectral_radius(&[0.0, -2.0, 2.0, 0.0], 2);
        assert!((r - 2.0).abs() < 1e-5, "{r}");
        // Upper triangular: eigenvalues on the diagonal.
        let r = spectral_radius(&[0.5, 10.0, 0.0, -3.0], 2);
        assert!((r - 3.0).abs() < 1e-4, "{r}");
        assert_eq!(spectral_radius(&[0.0; 4], 2), 0.0);
    }
}
