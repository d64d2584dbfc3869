//! The C library conversions dog's option values go through (`strtol`,
//! `strtoull`, `atoi`, `strtod`, casts of doubles to integers), reproduced
//! so that odd inputs are accepted or rejected exactly as the original
//! did (`-s 4294967296` is id 0, `-c 257` is 1 copy, `1e3` is a size, …).
//! All functions work on bytes: arguments need not be UTF-8.

/// C `isspace` in the C locale.
pub fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The original's `is_numeric`: non-empty and all ASCII digits.
pub fn is_numeric(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

fn digit_value(c: u8) -> Option<u64> {
    (c as char).to_digit(36).map(u64::from)
}

/// The common scanner of `strtol`/`strtoull`: whitespace, sign, an
/// optional `0x` prefix for base 16, digits. Returns (negative,
/// magnitude saturated at u64::MAX, overflowed, bytes consumed), with 0
/// consumed when nothing was converted.
fn scan_int(s: &[u8], base: u32) -> (bool, u64, bool, usize) {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut prefix_end = None;
    if base == 16 && s.get(i) == Some(&b'0') && matches!(s.get(i + 1), Some(b'x' | b'X')) {
        // "0x" with no hex digit after it converts the "0" alone.
        prefix_end = Some(i + 1);
        i += 2;
    }
    let start = i;
    let (mut v, mut over) = (0u64, false);
    while let Some(d) = s.get(i).and_then(|&c| digit_value(c)) {
        if d >= base as u64 {
            break;
        }
        match v.checked_mul(base as u64).and_then(|x| x.checked_add(d)) {
            Some(x) => v = x,
            None => over = true,
        }
        i += 1;
    }
    if i == start {
        return (false, 0, false, prefix_end.unwrap_or(0));
    }
    (neg, if over { u64::MAX } else { v }, over, i)
}

/// C `strtol`: the value (saturated to the i64 range) and the number of
/// bytes consumed (0 = no conversion, the original's `opt == p`).
pub fn strtol(s: &[u8], base: u32) -> (i64, usize) {
    let (neg, mag, over, n) = scan_int(s, base);
    let v = if neg {
        if over || mag > 1 << 63 {
            i64::MIN
        } else {
            (mag as i64).wrapping_neg()
        }
    } else if over || mag > i64::MAX as u64 {
        i64::MAX
    } else {
        mag as i64
    };
    (v, n)
}

/// C `strtol`/`strtoll` over the whole string, as the original checks it
/// (`p == s || errno || *p`): None without a conversion, with trailing
/// characters, or out of the i64 range.
pub fn strtol_whole(s: &[u8]) -> Option<i64> {
    let (neg, mag, over, n) = scan_int(s, 10);
    if n == 0 || n != s.len() || over {
        return None;
    }
    if neg {
        (mag <= 1 << 63).then(|| (mag as i64).wrapping_neg())
    } else {
        i64::try_from(mag).ok()
    }
}

/// C `strtoull`: saturates at u64::MAX; a minus sign negates modulo 2^64.
pub fn strtoull(s: &[u8], base: u32) -> (u64, usize) {
    let (neg, mag, over, n) = scan_int(s, base);
    let v = if over {
        u64::MAX
    } else if neg {
        mag.wrapping_neg()
    } else {
        mag
    };
    (v, n)
}

/// C `atoi`: `(int)strtol(s, NULL, 10)`.
pub fn atoi(s: &[u8]) -> i32 {
    strtol(s, 10).0 as i32
}

/// C `strtod` in the C locale: decimal and hexadecimal floats, `inf`,
/// `infinity`, `nan`, `nan(...)`, after optional whitespace and sign.
/// Returns the value and the bytes consumed (0 = no conversion).
pub fn strtod(s: &[u8]) -> (f64, usize) {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let neg = matches!(s.get(i), Some(b'-'));
    if matches!(s.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    let sign = |v: f64| if neg { -v } else { v };
    let rest = &s[i..];
    let lower = |n: usize| -> Vec<u8> { rest.iter().take(n).map(u8::to_ascii_lowercase).collect() };
    if lower(8) == b"infinity" {
        return (sign(f64::INFINITY), i + 8);
    }
    if lower(3) == b"inf" {
        return (sign(f64::INFINITY), i + 3);
    }
    if lower(3) == b"nan" {
        let mut n = i + 3;
        if s.get(n) == Some(&b'(') {
            let mut j = n + 1;
            while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'_') {
                j += 1;
            }
            if s.get(j) == Some(&b')') {
                n = j + 1;
            }
        }
        return (sign(f64::NAN), n);
    }
    if rest.first() == Some(&b'0') && matches!(rest.get(1), Some(b'x' | b'X')) {
        if let Some((v, n)) = hex_float(&rest[2..]) {
            return (sign(v), i + 2 + n);
        }
    }
    match dec_float(rest) {
        Some((v, n)) => (sign(v), i + n),
        None => (0.0, 0),
    }
}

fn count_while(s: &[u8], f: impl Fn(u8) -> bool) -> usize {
    s.iter().take_while(|&&c| f(c)).count()
}

/// Length of an exponent `<e>[sign]digits` at the start of `s`, 0 if
/// there is none (a bare `e` is not part of the number).
fn exponent_len(s: &[u8], marker: &[u8]) -> usize {
    if !s.first().is_some_and(|c| marker.contains(c)) {
        return 0;
    }
    let mut j = 1;
    if matches!(s.get(j), Some(b'+' | b'-')) {
        j += 1;
    }
    let d = count_while(&s[j..], |c| c.is_ascii_digit());
    if d == 0 {
        0
    } else {
        j + d
    }
}

fn dec_float(s: &[u8]) -> Option<(f64, usize)> {
    let int = count_while(s, |c| c.is_ascii_digit());
    let mut n = int;
    let mut frac = 0;
    if s.get(n) == Some(&b'.') {
        frac = count_while(&s[n + 1..], |c| c.is_ascii_digit());
        n += 1 + frac;
    }
    if int + frac == 0 {
        return None;
    }
    n += exponent_len(&s[n..], b"eE");
    let text = std::str::from_utf8(&s[..n]).ok()?;
    // Rust's parser is correctly rounded like glibc's; it wants at least
    // one digit before an exponent, which `int + frac > 0` guarantees.
    let v = if int == 0 {
        format!("0{text}").parse().ok()?
    } else {
        text.parse().ok()?
    };
    Some((v, n))
}

/// Parses the part after `0x`; None if no hex digit follows (then only
/// the leading `0` converts).
fn hex_float(s: &[u8]) -> Option<(f64, usize)> {
    let is_hex = |c: u8| c.is_ascii_hexdigit();
    let int = count_while(s, is_hex);
    let mut n = int;
    let mut frac = 0;
    if s.get(n) == Some(&b'.') {
        frac = count_while(&s[n + 1..], is_hex);
        if int + frac > 0 {
            n += 1 + frac;
        }
    }
    if int + frac == 0 {
        return None;
    }
    // Up to 16 significant digits in a u64; further digits only scale
    // the value, and a non-zero one is kept as a sticky low bit so that
    // the u64 → f64 rounding stays correct.
    let (mut mant, mut exp, mut sig, mut sticky) = (0u64, 0i64, 0, false);
    let digits = s[..int].iter().map(|&c| (c, false)).chain(
        s.get(int + 1..int + 1 + frac)
            .unwrap_or(&[])
            .iter()
            .map(|&c| (c, true)),
    );
    for (c, fractional) in digits {
        let d = digit_value(c).unwrap();
        if sig < 16 {
            if mant != 0 || d != 0 {
                sig += 1;
            }
            mant = mant * 16 + d;
            if fractional {
                exp -= 4;
            }
        } else {
            sticky |= d != 0;
            if !fractional {
                exp += 4;
            }
        }
    }
    let e = exponent_len(&s[n..], b"pP");
    if e > 0 {
        let (v, _) = strtol(&s[n + 1..n + e], 10);
        exp = exp.saturating_add(v);
        n += e;
    }
    let m = (mant | sticky as u64) as f64;
    let v = if mant == 0 {
        0.0
    } else {
        m * 2f64.powi(exp.clamp(-2000, 2000) as i32)
    };
    Some((v, n))
}

/// `cvttsd2si`: truncation to i64, with the "integer indefinite" value
/// for NaN and out-of-range inputs.
fn cvttsd2si(x: f64) -> i64 {
    const TWO63: f64 = 9_223_372_036_854_775_808.0;
    if x.is_nan() || !(-TWO63..TWO63).contains(&x) {
        i64::MIN
    } else {
        x.trunc() as i64
    }
}

/// `(uint64_t)x` as gcc compiles it on x86-64 (negative values wrap,
/// NaN and -inf give 2^63, +inf and values ≥ 2^64 give 0).
pub fn c_f64_to_u64(x: f64) -> u64 {
    const TWO63: f64 = 9_223_372_036_854_775_808.0;
    if x >= TWO63 {
        (cvttsd2si(x - TWO63) as u64) ^ (1 << 63)
    } else {
        cvttsd2si(x) as u64
    }
}

/// `(int)x` on x86-64: NaN and out-of-range values give INT_MIN.
pub fn c_f64_to_i32(x: f64) -> i32 {
    if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x.trunc() as i32
    }
}

/// printf `%.<prec>f` of a double, including glibc's spelling of
/// non-finite values.
pub fn c_fixed(x: f64, prec: usize) -> String {
    if x.is_nan() {
        if x.is_sign_negative() { "-nan" } else { "nan" }.to_string()
    } else if x.is_infinite() {
        if x < 0.0 { "-inf" } else { "inf" }.to_string()
    } else {
        format!("{x:.prec$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtol_cases() {
        assert_eq!(strtol(b"42", 10), (42, 2));
        assert_eq!(strtol(b"  -7x", 10), (-7, 4));
        assert_eq!(strtol(b"x", 10), (0, 0));
        assert_eq!(strtol(b"", 10), (0, 0));
        assert_eq!(strtol(b"-", 10), (0, 0));
        assert_eq!(strtol(b"99999999999999999999", 10), (i64::MAX, 20));
        assert_eq!(strtol(b"-99999999999999999999", 10), (i64::MIN, 21));
        assert_eq!(strtol(b"-9223372036854775808", 10), (i64::MIN, 20));
        assert_eq!(strtol(b"0x1f", 16), (31, 4));
        assert_eq!(strtol(b"1f", 16), (31, 2));
        assert_eq!(strtol(b"0x", 16), (0, 1));
        assert_eq!(strtol(b"0xg", 16), (0, 1));
        assert_eq!(atoi(b"276") as u8, 20);
        assert_eq!(atoi(b"99999999999"), 99999999999i64 as i32);
        assert_eq!(atoi(b"-1") as u32, u32::MAX);
    }

    #[test]
    fn strtoull_cases() {
        assert_eq!(strtoull(b"80ed202e00000000", 16), (0x80ed202e00000000, 16));
        assert_eq!(strtoull(b"0x10", 16), (16, 4));
        assert_eq!(strtoull(b"-1", 16), (u64::MAX, 2));
        assert_eq!(strtoull(b"fffffffffffffffff", 16), (u64::MAX, 17));
        assert_eq!(strtoull(b"zz", 16), (0, 0));
    }

    #[test]
    fn strtod_cases() {
        let f = |s: &[u8]| strtod(s);
        assert_eq!(f(b"1.5G"), (1.5, 3));
        assert_eq!(f(b"512"), (512.0, 3));
        assert_eq!(f(b"1e3"), (1000.0, 3));
        assert_eq!(f(b"1e"), (1.0, 1));
        assert_eq!(f(b"1e+"), (1.0, 1));
        assert_eq!(f(b"0x100000"), (1048576.0, 8));
        assert_eq!(f(b"0x"), (0.0, 1));
        assert_eq!(f(b"0x1p4"), (16.0, 5));
        assert_eq!(f(b"0x.8"), (0.5, 4));
        assert_eq!(f(b" 3M"), (3.0, 2));
        assert_eq!(f(b".5"), (0.5, 2));
        assert_eq!(f(b"5."), (5.0, 2));
        assert_eq!(f(b"."), (0.0, 0));
        assert_eq!(f(b""), (0.0, 0));
        assert_eq!(f(b"M"), (0.0, 0));
        assert_eq!(f(b"-2k"), (-2.0, 2));
        assert_eq!(f(b"inf"), (f64::INFINITY, 3));
        assert_eq!(f(b"Infinityx"), (f64::INFINITY, 8));
        assert!(f(b"nan(abc)").0.is_nan());
        assert_eq!(f(b"nan(abc)").1, 8);
        assert_eq!(f(b"nan(").1, 3);
        assert_eq!(f(b"1e400").0, f64::INFINITY);
        assert_eq!(
            f(b"0x123456789abcdef0123").0,
            0x123456789abcdef0123u128 as f64
        );
    }

    #[test]
    fn double_casts_match_x86() {
        assert_eq!(c_f64_to_u64(1.9), 1);
        assert_eq!(c_f64_to_u64(-5.0), (-5i64) as u64);
        assert_eq!(c_f64_to_u64(-0.5), 0);
        assert_eq!(c_f64_to_u64(f64::NAN), 1 << 63);
        assert_eq!(c_f64_to_u64(f64::INFINITY), 0);
        assert_eq!(c_f64_to_u64(f64::NEG_INFINITY), 1 << 63);
        assert_eq!(c_f64_to_u64(1.8446744073709552e19), 0);
        assert_eq!(c_f64_to_u64(1.7e19), 17_000_000_000_000_000_000);
        assert_eq!(c_f64_to_i32(f64::NAN), i32::MIN);
        assert_eq!(c_f64_to_i32(99.9), 99);
        assert_eq!(c_fixed(f64::NAN.copysign(-1.0), 1), "-nan");
        assert_eq!(c_fixed(f64::INFINITY, 1), "inf");
        assert_eq!(c_fixed(5.55, 1), "5.5");
        assert_eq!(c_fixed(0.25, 1), "0.2");
    }
}
