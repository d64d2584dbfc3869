//! stdout and stderr with the buffering of C stdio (CLI.md §1.4).
//!
//! Golden files and scripts capture `dog … >out 2>&1`; there the original's
//! stdout is a fully buffered stdio stream, so every stderr message of a run
//! lands *before* stdout text printed earlier but not yet flushed. Rust's
//! `std::io::Stdout` is always line buffered and would interleave
//! differently, so dog writes fd 1 through [`Stdout`] instead: a block
//! buffer sized like glibc's when fd 1 is not a terminal, line buffering
//! when it is. stderr is unbuffered: one `write(2)` per message.
//!
//! The buffer is process-global (like `stdout` in C) because output is
//! produced from everywhere, including the option parser, and must be
//! flushed on every exit path ([`flush`] is called once by `main`).

use std::io;
use std::sync::Mutex;

/// The stdout stream: a buffer in front of fd 1.
pub struct Stdout {
    buf: Vec<u8>,
    /// Buffer size: flush once this many bytes are pending.
    block: usize,
    /// Line buffered (terminal): flush through the last newline written.
    line: bool,
}

static STDOUT: Mutex<Option<Stdout>> = Mutex::new(None);

/// True if fd 1 is a terminal.
pub fn stdout_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(1) == 1 }
}

/// glibc's stdio buffer size for fd 1: `st_blksize` when it is positive
/// and below BUFSIZ (8192), else BUFSIZ.
fn glibc_block_size() -> usize {
    const BUFSIZ: usize = 8192;
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(1, &mut st) } == 0 && st.st_blksize > 0 {
        (st.st_blksize as usize).min(BUFSIZ)
    } else {
        BUFSIZ
    }
}

/// Writes all of `b` to `fd`, retrying on EINTR.
fn write_fd(fd: i32, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        // SAFETY: the pointer and length come from a live slice.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        b = &b[n as usize..];
    }
    Ok(())
}

impl Stdout {
    fn new() -> Self {
        let line = stdout_is_tty();
        Stdout {
            buf: Vec::new(),
            block: glibc_block_size(),
            line,
        }
    }

    /// How many leading bytes of the buffer stdio would have written by
    /// now: whole blocks, and on a terminal everything through the last
    /// newline.
    fn ready(&self) -> usize {
        let blocks = self.buf.len() - self.buf.len() % self.block;
        let lines = if self.line {
            self.buf
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |p| p + 1)
        } else {
            0
        };
        blocks.max(lines)
    }

    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        let upto = self.ready();
        if upto > 0 {
            // Like stdio, a failing write only loses output; the exit
            // status is the command's.
            let _ = write_fd(1, &self.buf[..upto]);
            self.buf.drain(..upto);
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let _ = write_fd(1, &self.buf);
            self.buf.clear();
        }
    }
}

fn with_stdout<R>(f: impl FnOnce(&mut Stdout) -> R) -> R {
    let mut g = STDOUT.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Stdout::new))
}

/// Appends bytes to the stdout buffer.
pub fn out_bytes(b: &[u8]) {
    with_stdout(|s| s.push(b));
}

/// Flushes the stdout buffer (process exit, before reading a prompt
/// answer on a terminal, before raw data).
pub fn flush() {
    with_stdout(|s| s.flush());
}

/// True if stdout is line buffered, i.e. a terminal.
pub fn stdout_line_buffered() -> bool {
    with_stdout(|s| s.line)
}

/// Writes bulk data straight to fd 1 (after what is buffered), as the
/// original's `xwrite(STDOUT_FILENO, …)`.
pub fn write_raw(b: &[u8]) -> io::Result<()> {
    flush();
    write_fd(1, b)
}

/// Writes one diagnostic line (the message plus `\n`) to stderr in a
/// single write, as the original's `sd_err`.
pub fn err_line(msg: &[u8]) {
    let mut v = Vec::with_capacity(msg.len() + 1);
    v.extend_from_slice(msg);
    v.push(b'\n');
    let _ = write_fd(2, &v);
}

/// Formatted text to the stdout buffer (like `printf`).
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::out::out_bytes(format!($($t)*).as_bytes()) };
}

/// A formatted diagnostic line to stderr (like `sd_err`); the newline is
/// added.
#[macro_export]
macro_rules! err {
    ($($t:tt)*) => { $crate::out::err_line(format!($($t)*).as_bytes()) };
}

/// Builds a byte message from text and raw byte pieces, for messages that
/// quote VDI names (arbitrary bytes, printed as they are).
pub struct Msg(pub Vec<u8>);

impl Msg {
    pub fn new() -> Self {
        Msg(Vec::new())
    }
    pub fn s(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn b(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Sends the message to stderr as one line.
    pub fn err(self) {
        err_line(&self.0);
    }
    /// Appends the message to stdout.
    pub fn out(self) {
        out_bytes(&self.0);
    }
}

/// Terminal width from `TIOCGWINSZ`, 80 if unavailable.
fn screen_width() -> i32 {
    // SAFETY: TIOCGWINSZ fills the zeroed winsize we own.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut w) } < 0 {
        80
    } else {
        w.ws_col as i32
    }
}

/// The bar of the command running now, if it is drawing one.
static PROGRESS: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// The progress line of CLI.md §1.12 for `done` of `total` (sizes human,
/// or plain numbers with `raw`), only when stdout is a terminal.
///
/// indicatif draws it (rate-limited redraws, terminal handling); the line
/// itself keeps the original's look through a custom template key. The
/// bar ends, with a newline, when `done` reaches `total`.
pub fn show_progress(done: u64, total: u64, raw: bool) {
    if !stdout_is_tty() || screen_width() <= 0 {
        return;
    }
    let mut current = PROGRESS.lock().unwrap();
    let bar = current.get_or_insert_with(|| {
        // What dog printed so far goes first.
        flush();
        let line = move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            // One column short of the screen, so the line never wraps.
            let width = (screen_width() as usize).saturating_sub(1);
            let _ = w.write_str(&progress_line(s.pos(), s.len().unwrap_or(0), raw, width));
        };
        let style = indicatif::ProgressStyle::with_template("{line}")
            .expect("a valid template")
            .with_key("line", line);
        let target = indicatif::ProgressDrawTarget::stdout();
        indicatif::ProgressBar::with_draw_target(Some(total), target).with_style(style)
    });
    bar.set_length(total);
    bar.set_position(done);
    if done >= total {
        bar.finish();
        *current = None;
        out_bytes(b"\n");
        flush();
    }
}

/// The text of one progress line, exactly `width` characters.
fn progress_line(done: u64, total: u64, raw: bool, width: usize) -> String {
    let pct = crate::cnum::c_fixed(done as f64 / total as f64 * 100.0, 1);
    let mut s = format!("{pct:>5} % [");
    s.truncate(width.saturating_sub(1));
    let bar = width as i64 - 30;
    for i in 0..bar.max(0) as u64 {
        let bar = bar as u64;
        let c = if total.wrapping_mul(i + 1) / bar <= done {
            '='
        } else if total.wrapping_mul(i) / bar <= done && done < total.wrapping_mul(i + 1) / bar {
            '>'
        } else {
            ' '
        };
        s.push(c);
    }
    let tail = format!(
        "] {} / {}",
        crate::text::strnumber(done, raw),
        crate::text::strnumber(total, raw)
    );
    let room = width.saturating_sub(1).saturating_sub(s.len());
    s.push_str(&tail[..tail.len().min(room)]);
    let mut s: String = format!("{s:<width$}");
    s.truncate(width);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_bytes_follow_stdio_rules() {
        let mut s = Stdout {
            buf: b"abc\nde".to_vec(),
            block: 4,
            line: false,
        };
        assert_eq!(s.ready(), 4);
        s.block = 4096;
        assert_eq!(s.ready(), 0);
        s.line = true;
        assert_eq!(s.ready(), 4);
        s.buf = vec![b'x'; 9000];
        assert_eq!(s.ready(), 8192);
    }

    #[test]
    fn progress_line_matches_spec() {
        let l = progress_line(4 << 20, 12 << 20, false, 80);
        assert_eq!(
            l,
            " 33.3 % [================>                                 ] 4.0 MB / 12 MB     "
        );
        let done = progress_line(12, 12, true, 40);
        assert_eq!(done, "100.0 % [==========] 12 / 12            ");
    }

    #[test]
    fn msg_concatenates_bytes() {
        let m = Msg::new().s("a ").b(b"\xff").s("!");
        assert_eq!(m.0, b"a \xff!");
    }
}
