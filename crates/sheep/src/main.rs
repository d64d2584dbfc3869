//! `sheep`: the Sheepdog storage daemon.
//!
//! Start-up follows the original: parse options, create and lock the base
//! directory, daemonize (the launching command returns 0 once the lock is
//! held), then open the store, listen and join the cluster.

mod clock;
#[cfg(test)]
mod cluster_sim;
mod core;
mod daemon;
mod ec;
mod gateway;
mod nbd;
mod ops;
mod opts;
mod peer;
mod recovery;
mod repair;
mod scrub;
mod server;
#[cfg(test)]
mod sim;
mod state;
#[cfg(test)]
mod testing;
mod vdi;
mod worker;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

fn lock_base(dir: &std::path::Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    // SAFETY: flock on a valid descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Forks twice; the original process exits with the status the grandchild
/// reports through the returned pipe descriptor (1 if it cannot lock the
/// base directory; otherwise what the daemon reports once it has joined
/// the cluster, so an unreachable cluster service fails the command).
fn daemonize(dir: &std::path::Path) -> (File, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: plain POSIX calls before any thread exists.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            eprintln!("failed to create a pipe");
            std::process::exit(1);
        }
        match libc::fork() {
            -1 => {
                eprintln!("failed to fork");
                std::process::exit(1)
            }
            0 => {}
            _ => {
                libc::close(fds[1]);
                let mut b = [1u8];
                let n = libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                std::process::exit(if n == 1 { b[0] as i32 } else { 1 });
            }
        }
        libc::close(fds[0]);
        libc::setsid();
        match libc::fork() {
            -1 => std::process::exit(1),
            0 => {}
            _ => libc::_exit(0),
        }
    }
    let status = |s: u8| {
        // SAFETY: writing one byte to our end of the pipe.
        unsafe { libc::write(fds[1], [s].as_ptr().cast(), 1) };
    };
    let lock = match lock_base(dir) {
        Ok(l) => l,
        Err(_) => {
            eprintln!("another sheep daemon is using {}", dir.display());
            status(1);
            std::process::exit(1);
        }
    };
    // SAFETY: redirecting the standard descriptors to /dev/null.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        libc::dup2(null, 2);
        if null > 2 {
            libc::close(null);
        }
    }
    (lock, fds[1])
}

/// Reports the start-up status to the launching process (once).
fn report(fd: i32, code: i32) {
    if fd >= 0 {
        // SAFETY: writing one byte to, then closing, our end of the pipe.
        unsafe {
            libc::write(fd, [code as u8].as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

/// Raises the open-file limit to its hard limit: a node keeps sockets to
/// every peer and client, and open checksum files.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn init_logging(o: &opts::Opts, dir: &std::path::Path) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(o.log_level)
        .with_ansi(false)
        .with_target(false);
    if o.log_stdout {
        builder.with_writer(std::io::stderr).init();
        return;
    }
    let log_dir = o
        .log_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.to_path_buf());
    match OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("sheep.log"))
    {
        Ok(f) => builder.with_writer(std::sync::Mutex::new(f)).init(),
        Err(e) => {
            eprintln!("failed to open log file: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match opts::parse(&args) {
        Ok(opts::Parsed::Print(s)) => {
            print!("{s}");
            return;
        }
        Ok(opts::Parsed::Run(o)) => *o,
        Err(e) => {
            print!("{}", e.stdout);
            eprintln!("{}", e.stderr);
            std::process::exit(1);
        }
    };
    let dir = PathBuf::from(&o.dir);
    if let Err(e) = std::fs::create_dir(&dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            eprintln!("cannot create directory {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
    let dir = dir.canonicalize().unwrap_or(dir);
    let foreground = o.foreground || o.log_stdout;
    let (lock, status_fd) = if foreground {
        match lock_base(&dir) {
            Ok(l) => (l, -1),
            Err(_) => {
                eprintln!("another sheep daemon is using {}", dir.display());
                std::process::exit(1);
            }
        }
    } else {
        daemonize(&dir)
    };
    let reported = std::sync::atomic::AtomicBool::new(false);
    let ready = |code: i32| {
        if !reported.swap(true, std::sync::atomic::Ordering::SeqCst) {
            report(status_fd, code);
        }
    };
    init_logging(&o, &dir);
    raise_fd_limit();
    // SAFETY: ignoring SIGPIPE so a dead peer socket is an error, not death.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        match daemon::run(o.clone(), dir.clone(), &ready).await {
            Ok(()) => 0,
            Err(e) if e.is::<daemon::Rejoin>() => daemon::EXIT_REJOIN,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("{e:#}");
                1
            }
        }
    });
    ready(code);
    if let Some(p) = &o.pidfile {
        let _ = std::fs::remove_file(p);
    }
    drop(lock);
    let _ = std::io::stderr().flush();
    if code == daemon::EXIT_REJOIN {
        // Start over in place: a fresh incarnation replays the cluster's
        // stream and rejoins; already a daemon, it stays in the foreground.
        use std::os::unix::process::CommandExt;
        // The command line stays the same (tools find sheep by it), with
        // `-f` appended.
        let argv0 = std::env::args().next().unwrap_or_else(|| "sheep".into());
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        if !args.iter().any(|a| a == "-f" || a == "--foreground") {
            args.push("-f".into());
        }
        let err = std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .args(&args)
            .env(daemon::REJOIN_ENV, "1")
            .exec();
        eprintln!("failed to restart: {err}");
        std::process::exit(1);
    }
    std::process::exit(code);
}
