//! `dog`, the Sheepdog administrator utility: a reimplementation whose
//! command line, output bytes, stream placement and exit codes match the
//! original 1.0 dog (see `spec/CLI.md`), so that scripts, golden files,
//! OpenStack Cinder and libvirt keep working unchanged.

mod app;
mod cmd;
mod cmdtab;
mod cnum;
mod getopt;
mod net;
mod opts;
mod out;
mod text;
mod usage;

/// How a command ends, mirroring the two ways the original's commands
/// end: returning a status to `main` (which then prints the usage for
/// 64 and the elapsed time for `-T`), or calling `exit()` on the spot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum End {
    /// Return this status from the subcommand.
    Ret(i32),
    /// End the process now with this status.
    Exit(i32),
}

/// Result of a step of a command; `Ok` continues, `Err` ends it.
pub type Res<T> = Result<T, End>;

fn main() {
    let start = std::time::Instant::now();
    // The original does not ignore SIGPIPE: `dog vdi read x | head -c1`
    // ends dog by the signal. Rust ignores it by default; restore it.
    // SAFETY: resetting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    text::init_timezone();
    use std::os::unix::ffi::OsStringExt;
    let args: Vec<Vec<u8>> = std::env::args_os().map(|a| a.into_vec()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(app::run(args, start));
    out::flush();
    std::process::exit(code);
}
