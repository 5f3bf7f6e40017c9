//! Element-wise maths the compiler can vectorise: `exp` and `erf` without calls into libm
//! (whose scalar `expf` was a sixth of an inference step), and [`vectorised`], which runs a
//! loop compiled for the widest vector unit the CPU has (AVX-512, AVX2) instead of the
//! baseline x86-64 target's SSE2.

/// Runs `f` compiled for the best instruction set the CPU supports, so that the loops inside
/// it are vectorised with the widest registers available (chosen at run time).
///
/// `f`, and every closure it calls, must be `#[inline(always)]`: a closure left as a function
/// of its own is compiled for the baseline target (SSE2, four lanes, no FMA), which made GELU
/// 2.4 times slower until they were marked.
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Below this, `exp` returns exactly 0 (as a masked attention score needs); e^-87 is the
/// smallest normal f32's order.
const EXP_LOW: f32 = -87.0;
/// Above this, e^x overflows f32.
const EXP_HIGH: f32 = 88.0;

/// e^x to within 2 ulp, branch-free: x = n ln2 + r with |r| <= ln2/2, e^r by Cephes's
/// polynomial, 2^n built in the exponent bits (integer operations only, which vectorise
/// where a float-to-int conversion would not).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer n held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(EXP_LOW, EXP_HIGH);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = poly * r * r + r + 1.0;
    // The low 9 bits of n land in the exponent field; adding the bias makes it 2^n.
    let two_n = f32::from_bits((shifted.to_bits() << 23).wrapping_add(127 << 23));
    if x < EXP_LOW { 0.0 } else { e_r * two_n }
}

/// The error function, to 1.5e-7 (Abramowitz and Stegun 7.1.26).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-x * x);
    y.copysign(x)
}

/// Lanes of the partial reductions below: a float sum in order is one long dependency chain
/// the compiler may not reorder; this many independent partial results vectorise.
const LANES: usize = 16;

/// `combine` folded over `term` of the elements at each index of the equally long `inputs`, in
/// [`LANES`] interleaved partial results, then across them. Each input is sliced once per
/// chunk of [`LANES`], so that the lanes themselves index fixed-size arrays without bounds
/// checks (an index into the whole slice kept the loop scalar).
#[inline(always)]
fn reduce<const N: usize>(
    inputs: [&[f32]; N],
    init: f32,
    term: impl Fn([f32; N]) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let len = inputs.first().map_or(0, |xs| xs.len());
    assert!(
        inputs.iter().all(|xs| xs.len() == len),
        "inputs of different lengths"
    );
    let mut partial = [init; LANES];
    let whole = len - len % LANES;
    for start in (0..whole).step_by(LANES) {
        let chunks =
            inputs.map(|xs| -> &[f32; LANES] { xs[start..start + LANES].try_into().unwrap() });
        for (lane, partial) in partial.iter_mut().enumerate() {
            *partial = combine(*partial, term(chunks.map(|chunk| chunk[lane])));
        }
    }
    let total = partial.into_iter().fold(init, &combine);
    (whole..len).fold(total, |total, i| {
        combine(total, term(inputs.map(|xs| xs[i])))
    })
}

/// The sum of `xs`, vectorised (in a different order than one by one).
#[inline(always)]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    sum_of([xs], |[x]| x)
}

/// The sum of `term` over the elements at each index of the equally long `inputs`, vectorised.
#[inline(always)]
pub(crate) fn sum_of<const N: usize>(inputs: [&[f32]; N], term: impl Fn([f32; N]) -> f32) -> f32 {
    reduce(inputs, 0.0, term, |a, b| a + b)
}

/// The largest of `xs` (-inf for none), vectorised.
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    reduce(
        [xs],
        f32::NEG_INFINITY,
        |[x]| x,
        |a, b| if b > a { b } else { a },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_zero_far_below() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            let ulp = (libm.to_bits() as i64 - ours.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {ours}, libm {libm}");
            x += 0.013;
        }
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(88.0).is_finite());
    }

    #[test]
    fn erf_is_accurate_to_its_bound() {
        for (x, expected) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (3.5, 0.999_999_3),
        ] {
            assert!((erf(x) - expected).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn reductions_cover_every_element() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 - 20.0) * 0.5).collect();
        assert_eq!(sum(&xs), xs.iter().sum::<f32>());
        assert_eq!(
            sum_of([&xs], |[x]| x * x),
            xs.iter().map(|x| x * x).sum::<f32>()
        );
        assert_eq!(max(&xs), 8.0);
        assert_eq!(max(&xs[..5]), -8.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let ys: Vec<f32> = xs.iter().map(|x| x * 3.0 + 1.0).collect();
        assert_eq!(
            sum_of([&xs, &ys], |[x, y]| x * y),
            xs.iter().zip(&ys).map(|(x, y)| x * y).sum::<f32>()
        );
        assert_eq!(sum_of([&[], &[]], |[x, y]| x * y), 0.0);
        assert_eq!(sum(&[]), 0.0);
    }

    #[test]
    fn vectorised_loops_match_scalar_ones() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.1 - 50.0).collect();
        let mut out = vec![0.0; xs.len()];
        vectorised(
            #[inline(always)]
            || {
                for (out, &x) in out.iter_mut().zip(&xs) {
                    *out = exp(x);
                }
            },
        );
        for (out, x) in out.iter().zip(&xs) {
            assert_eq!(*out, exp(*x));
        }
    }
}
