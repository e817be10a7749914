//! Scalar semantics of circ's built-in functions, and the `extern "C"` entry points compiled
//! code calls for them.
//!
//! Input: scalars. Output: scalars. Invariants: the interpreter and the JIT call exactly these
//! functions for every transcendental operation, so both agree bit for bit on them; none of
//! them panics (NaN in, NaN out); the random-number functions are counter-based (a hash of
//! seed, stream, step and element index), so draws do not depend on evaluation order.

/// Default slope of `leaky_relu` when the second argument is omitted.
pub const LEAKY_SLOPE: f64 = 0.01;

pub fn sigmoid(x: f64) -> f64 {
    // Two branches keep exp from overflowing for large |x|.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// softplus(x, β) = log(1 + exp(βx)) / β, computed without overflow.
pub fn softplus(x: f64, beta: f64) -> f64 {
    let z = beta * x;
    let sp = if z > 30.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() };
    sp / beta
}

/// GELU with the tanh approximation (as in most ML libraries' "approximate" mode).
pub fn gelu(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

macro_rules! unary_helpers {
    ($($name32:ident, $name64:ident => |$x:ident| $body:expr;)*) => {
        $(
            /// Called from compiled code (f32).
            pub extern "C" fn $name32($x: f32) -> f32 {
                let $x = $x as f64;
                ($body) as f32
            }
            /// Called from compiled code (f64).
            pub extern "C" fn $name64($x: f64) -> f64 {
                $body
            }
        )*
    };
}

unary_helpers! {
    circ_exp_f32, circ_exp_f64 => |x| x.exp();
    circ_log_f32, circ_log_f64 => |x| x.ln();
    circ_tanh_f32, circ_tanh_f64 => |x| x.tanh();
    circ_sigmoid_f32, circ_sigmoid_f64 => |x| sigmoid(x);
    circ_gelu_f32, circ_gelu_f64 => |x| gelu(x);
    circ_sin_f32, circ_sin_f64 => |x| x.sin();
    circ_cos_f32, circ_cos_f64 => |x| x.cos();
}

/// Called from compiled code (f32): softplus with β.
pub extern "C" fn circ_softplus_f32(x: f32, beta: f32) -> f32 {
    softplus(x as f64, beta as f64) as f32
}
/// Called from compiled code (f64): softplus with β.
pub extern "C" fn circ_softplus_f64(x: f64, beta: f64) -> f64 {
    softplus(x, beta)
}
/// Called from compiled code (f32): x^y.
pub extern "C" fn circ_pow_f32(x: f32, y: f32) -> f32 {
    (x as f64).powf(y as f64) as f32
}
/// Called from compiled code (f64): x^y.
pub extern "C" fn circ_pow_f64(x: f64, y: f64) -> f64 {
    x.powf(y)
}

/// Floating remainder with the sign of the dividend (C's `fmod`); NaN for a zero divisor.
pub fn fmod(x: f64, y: f64) -> f64 {
    x % y
}
/// Called from compiled code (f32): `x % y`.
pub extern "C" fn circ_fmod_f32(x: f32, y: f32) -> f32 {
    fmod(x as f64, y as f64) as f32
}
/// Called from compiled code (f64): `x % y`.
pub extern "C" fn circ_fmod_f64(x: f64, y: f64) -> f64 {
    fmod(x, y)
}

/// The f32 result of a unary built-in as the JIT computes it: through f64, then rounded.
/// The interpreter uses these too, so both agree exactly.
pub fn unary_f32(f: fn(f64) -> f64, x: f32) -> f32 {
    f(x as f64) as f32
}

/// SplitMix64 finaliser: a bijective mixer of 64 bits.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) from (seed, stream, step, index): 53 random bits.
pub extern "C" fn circ_rand_uniform(seed: u64, stream: u64, step: u64, index: u64) -> f64 {
    let h =
        mix64(seed ^ mix64(stream.wrapping_add(0x632B_E59B_D9B4_E019) ^ mix64(step ^ mix64(index.wrapping_add(0x9E37_79B9_7F4A_7C15)))));
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal draw from (seed, stream, step, index), by Box–Muller on two uniforms.
pub extern "C" fn circ_rand_normal(seed: u64, stream: u64, step: u64, index: u64) -> f64 {
    let u1 = circ_rand_uniform(seed, stream, step, index.wrapping_mul(2));
    let u2 = circ_rand_uniform(seed, stream, step, index.wrapping_mul(2).wrapping_add(1));
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    r * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_and_softplus_are_stable_at_extremes() {
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-15);
        assert!((softplus(1000.0, 1.0) - 1000.0).abs() < 1e-9);
        assert!(softplus(-1000.0, 1.0) >= 0.0);
        assert!((softplus(0.0, 10.0) - (2f64.ln() / 10.0)).abs() < 1e-15);
    }

    #[test]
    fn uniform_draws_are_uniform_and_deterministic() {
        let n = 100_000;
        let mean: f64 = (0..n).map(|i| circ_rand_uniform(1, 2, 3, i)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert_eq!(circ_rand_uniform(1, 2, 3, 4), circ_rand_uniform(1, 2, 3, 4));
        assert_ne!(circ_rand_uniform(1, 2, 3, 4), circ_rand_uniform(1, 2, 4, 4));
        assert!((0..n).all(|i| (0.0..1.0).contains(&circ_rand_uniform(9, 0, 0, i))));
    }

    #[test]
    fn normal_draws_have_unit_variance() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|i| circ_rand_normal(5, 1, 0, i)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "{mean} {var}");
    }
}
