//! Value formats shared by the commands: size arguments (§1.6), human
//! sizes (§1.7), local dates (§1.9), raw-mode name escaping (§1.8) and
//! printf-style byte padding.

use crate::cnum::{c_f64_to_u64, is_c_space, strtod};

/// Parses a size argument: a C `strtod` number and at most one suffix
/// among `bBkKmMgGtTpP` (powers of 1024). The empty string is 0.
pub fn parse_size(arg: &[u8]) -> Option<u64> {
    let (mut v, n) = strtod(arg);
    let post = &arg[n..];
    if post.len() > 1 {
        return None;
    }
    let shifts = match post.first().map(u8::to_ascii_lowercase) {
        None | Some(b'b') => 0,
        Some(b'k') => 1,
        Some(b'm') => 2,
        Some(b'g') => 3,
        Some(b't') => 4,
        Some(b'p') => 5,
        Some(_) => return None,
    };
    for _ in 0..shifts {
        v *= 1024.0;
    }
    Some(c_f64_to_u64(v))
}

/// The two error lines of a bad size argument (stderr).
pub fn size_error(arg: &[u8]) {
    crate::out::Msg::new()
        .s("Invalid size '")
        .b(arg)
        .s("'")
        .err();
    crate::err!(
        "You may use B, K, M, G, T or P suffixes for bytes, kilobytes, megabytes, gigabytes, terabytes and petabytes."
    );
}

/// A size as dog prints it: decimal bytes in raw mode, else MB/GB/… with
/// one decimal below 10 and none from 10 on (the original's `strnumber`).
pub fn strnumber(bytes: u64, raw: bool) -> String {
    const UNITS: [&str; 7] = ["MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    if raw {
        return bytes.to_string();
    }
    let mut size = bytes as f64 / 1_048_576.0;
    let mut i = 0;
    while i < UNITS.len() - 1 && size >= 1024.0 {
        i += 1;
        size /= 1024.0;
    }
    if size >= 10.0 {
        format!("{size:.0} {}", UNITS[i])
    } else {
        format!("{size:.1} {}", UNITS[i])
    }
}

extern "C" {
    fn tzset();
}

/// Reads `TZ` into the C library's time-zone state (`localtime_r` alone
/// need not do it).
pub fn init_timezone() {
    // SAFETY: tzset only reads the environment; called before threads.
    unsafe { tzset() }
}

/// Formats a Unix time in local time with `strftime` (C locale: dog never
/// calls `setlocale`).
pub fn local_time(secs: i64, fmt: &str) -> String {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r fills the zeroed tm we own; strftime writes at
    // most buf.len() bytes into buf; the format is NUL-terminated.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        let cfmt = std::ffi::CString::new(fmt).expect("format without NUL");
        let mut buf = [0u8; 128];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), cfmt.as_ptr(), &tm);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// C `ctime()`: `Sat Nov 21 09:12:11 2026\n` (with the newline).
pub fn ctime(secs: i64) -> String {
    local_time(secs, "%a %b %e %H:%M:%S %Y\n")
}

/// Raw-mode name escaping: a backslash before every whitespace
/// character and before every backslash.
pub fn escape_name(name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(name.len());
    for &c in name {
        if is_c_space(c) || c == b'\\' {
            v.push(b'\\');
        }
        v.push(c);
    }
    v
}

/// `%-<w>s` of a byte string: padded on the right to `w` bytes.
pub fn pad_right(s: &[u8], w: usize) -> Vec<u8> {
    let mut v = s.to_vec();
    v.resize(w.max(s.len()), b' ');
    v
}

/// The bytes of a NUL-padded C string field, up to the first NUL.
pub fn cstr(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_arguments() {
        let cases: &[(&[u8], u64)] = &[
            (b"1.5G", 1610612736),
            (b"512", 512),
            (b"4096b", 4096),
            (b"1e3", 1000),
            (b"0x100000", 1048576),
            (b"10k", 10240),
            (b"2m", 2097152),
            (b" 3M", 3145728),
            (b"4T", 4398046511104),
            (b"1P", 1 << 50),
            (b"", 0),
            (b"M", 0),
            (b"20G", 20 << 30),
        ];
        for &(a, want) in cases {
            assert_eq!(parse_size(a), Some(want), "{}", String::from_utf8_lossy(a));
        }
        for bad in [&b"1MB"[..], b"1E", b"abc", b"1x", b"4 G"] {
            assert_eq!(parse_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn human_sizes_table() {
        let cases: &[(u64, &str)] = &[
            (0, "0.0 MB"),
            (512, "0.0 MB"),
            (1000, "0.0 MB"),
            (10240, "0.0 MB"),
            (4194304, "4.0 MB"),
            (12582912, "12 MB"),
            (52428, "0.0 MB"),
            (52429, "0.1 MB"),
            (10433331, "9.9 MB"),
            (10480517, "10.0 MB"),
            (10485760, "10 MB"),
            (11010048, "10 MB"),
            (104857600, "100 MB"),
            (1073741824, "1.0 GB"),
            (21474836480, "20 GB"),
            (4398046511104, "4.0 TB"),
            (18014398509481984, "16 PB"),
            (1073217536, "1024 MB"),
            (1073741823, "1024 MB"),
            (12079595520, "11 GB"),
            (u64::MAX, "16 EB"),
        ];
        for &(b, want) in cases {
            assert_eq!(strnumber(b, false), want, "{b}");
        }
        assert_eq!(strnumber(4398046511104, true), "4398046511104");
    }

    #[test]
    fn escaping_and_padding() {
        assert_eq!(escape_name(b"sp ace\\x"), b"sp\\ ace\\\\x");
        assert_eq!(escape_name(b"a\tb\nc"), b"a\\\tb\\\nc");
        assert_eq!(pad_right(b"abc", 5), b"abc  ");
        assert_eq!(pad_right(b"abcdef", 5), b"abcdef");
        assert_eq!(cstr(b"ab\0cd"), b"ab");
    }

    #[test]
    fn dates_in_utc() {
        // SAFETY: test setup of the process time zone; tests that read
        // TZ all set the same value.
        unsafe { std::env::set_var("TZ", "UTC") };
        init_timezone();
        assert_eq!(local_time(1795252331, "%Y-%m-%d %H:%M"), "2026-11-21 09:12");
        assert_eq!(ctime(1795252331), "Sat Nov 21 09:12:11 2026\n");
        assert_eq!(ctime(0), "Thu Jan  1 00:00:00 1970\n");
    }
}
