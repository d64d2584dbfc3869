//! The invocation flow of CLI.md §1.1: command and subcommand lookup,
//! environment, option parsing in command-line order, the node-list and
//! operand checks, nested subcommand dispatch, and the usage / elapsed-time
//! epilogue.

use crate::cmdtab::{find_command, find_sub, Action, Command, Sub, ARG, NL};
use crate::getopt::Getopt;
use crate::net::Net;
use crate::opts::{self, Opts};
use crate::out::Msg;
use crate::usage::{available_commands, main_usage, subcommand_usage, try_help};
use crate::{cmd, err, out, End, Res};
use sd_client::vdi::{get_node_list, stat_cluster};
use sd_client::ClientError;
use sd_proto::SdNode;
use std::net::SocketAddr;
use std::time::Instant;

/// Everything a subcommand works with.
pub struct Ctx {
    pub cmd: &'static Command,
    pub sub: &'static Sub,
    /// Nested subcommands entered (for usage texts).
    pub stack: Vec<&'static Sub>,
    pub opts: Opts,
    /// Operands after option permutation; `next` is the first unused
    /// one (the original's `optind`).
    pub operands: Vec<Vec<u8>>,
    pub next: usize,
    pub net: Net,
    /// The cluster as fetched by the node-list step.
    pub nodes: Vec<SdNode>,
    pub epoch: u32,
    /// Distinct zones among all nodes.
    pub nr_zones: usize,
}

impl Ctx {
    /// The sheep `-a`/`-p` select.
    pub fn target(&self) -> SocketAddr {
        self.opts.target
    }

    /// The next operand, consumed.
    pub fn take_operand(&mut self) -> Option<Vec<u8>> {
        let v = self.operands.get(self.next).cloned();
        if v.is_some() {
            self.next += 1;
        }
        v
    }

    /// The operands not consumed yet.
    pub fn rest(&self) -> &[Vec<u8>] {
        &self.operands[self.next.min(self.operands.len())..]
    }

    /// Prints the usage of the current subcommand path.
    pub fn usage(&self) {
        subcommand_usage(self.cmd, self.sub, &self.stack);
    }

    /// Fetches the node list and the cluster epoch from the target sheep
    /// (the original's `update_node_list`).
    pub async fn update_node_list(&mut self) -> Res<()> {
        let target = self.target();
        let nodes = match get_node_list(&mut self.net.at(target)).await {
            Ok(n) => n,
            Err(e) => {
                if let ClientError::Res(r) = e {
                    err!("Failed to update node list: {r}");
                }
                err!("Failed to get node list");
                return Err(End::Exit(2));
            }
        };
        if nodes.is_empty() {
            err!("There are no active sheep daemons");
            return Err(End::Exit(1));
        }
        let mut nodes = nodes;
        nodes.sort_by_key(|n| n.nid);
        let mut zones: Vec<u32> = nodes.iter().map(|n| n.zone).collect();
        zones.sort_unstable();
        zones.dedup();
        let Ok(stat) = stat_cluster(&mut self.net.at(target), 0, 1).await else {
            err!("Failed to get node list");
            return Err(End::Exit(2));
        };
        self.nodes = nodes;
        self.nr_zones = zones.len();
        self.epoch = stat.epoch;
        Ok(())
    }
}

/// Asks for confirmation (CLI.md §1.11): prints `msg` (not flushed unless
/// stdout is a terminal), reads one line of at most 7 bytes from stdin,
/// and ends dog with status 0 unless it starts with `yes` (any case).
pub fn confirm(msg: &str) -> Res<()> {
    out!("{msg}");
    if crate::out::stdout_line_buffered() {
        crate::out::flush();
    }
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 7 {
        // SAFETY: reads one byte into a live buffer.
        let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        } else if n == 0
            || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    if line.len() >= 3 && line[..3].eq_ignore_ascii_case(b"yes") {
        Ok(())
    } else {
        Err(End::Exit(0))
    }
}

/// Records the invocation when `SHEEPDOG_DOG_LOG` is set (CLI.md §1.3).
fn log_operation(args: &[Vec<u8>]) {
    if std::env::var_os("SHEEPDOG_DOG_LOG").is_none() {
        return;
    }
    let mut msg = Vec::new();
    for a in args {
        msg.push(b' ');
        msg.extend_from_slice(a);
    }
    match std::env::var_os("SHEEPDOG_DOG_LOG_PATH") {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path);
            match f {
                Ok(mut f) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    let mut line = crate::text::local_time(now, "%Y %b %2d %H:%M:%S ").into_bytes();
                    line.extend_from_slice(b": ");
                    line.extend_from_slice(&msg);
                    line.push(b'\n');
                    let _ = f.write_all(&line);
                }
                Err(e) => {
                    use std::os::unix::ffi::OsStrExt;
                    Msg::new()
                        .s("error at opening log file of dog(")
                        .b(path.as_bytes())
                        .s(&format!("): {}", crate::net::strerror(&e)))
                        .err();
                }
            }
        }
        None => {
            msg.retain(|&c| c != 0);
            let cmsg = std::ffi::CString::new(msg).expect("NULs removed");
            // SAFETY: the ident is a static C string (openlog keeps the
            // pointer); the format consumes exactly one string argument.
            unsafe {
                libc::openlog(
                    c"sheepdog admin operation".as_ptr(),
                    libc::LOG_PID,
                    libc::LOG_USER,
                );
                libc::syslog(libc::LOG_INFO, c"%s\n".as_ptr(), cmsg.as_ptr());
                libc::closelog();
            }
        }
    }
}

fn is_help_word(w: &[u8]) -> bool {
    matches!(w, b"help" | b"--help" | b"-h")
}

/// Runs one dog invocation and returns the process exit status.
pub async fn run(args: Vec<Vec<u8>>, start: Instant) -> i32 {
    match run_inner(&args, start).await {
        Ok(code) => code,
        Err(End::Exit(code)) | Err(End::Ret(code)) => code,
    }
}

async fn run_inner(args: &[Vec<u8>], start: Instant) -> Res<i32> {
    log_operation(args);
    let Some(cmd_name) = args.get(1) else {
        main_usage();
        return Ok(0);
    };
    let Some(cmd) = find_command(cmd_name) else {
        if is_help_word(cmd_name) {
            main_usage();
            return Ok(0);
        }
        Msg::new().s("Invalid command '").b(cmd_name).s("'").err();
        try_help();
        return Ok(64);
    };
    let Some(sub) = args.get(2).and_then(|s| find_sub(cmd.subs, s)) else {
        if let Some(s) = args.get(2).filter(|s| !is_help_word(s)) {
            Msg::new()
                .s("Invalid command '")
                .b(cmd_name)
                .s(" ")
                .b(s)
                .s("'")
                .err();
        }
        available_commands(cmd);
        return Ok(64);
    };

    let mut opts = Opts::default();
    if let Some(v) = std::env::var_os("SHEEPDOG_DOG_ADDR") {
        use std::os::unix::ffi::OsStrExt;
        opts::set_address(&mut opts, v.as_bytes())?;
    }
    if let Some(v) = std::env::var_os("SHEEPDOG_DOG_PORT") {
        use std::os::unix::ffi::OsStrExt;
        opts::set_port(&mut opts, v.as_bytes())?;
    }

    let specs = cmd.specs(sub.opts);
    let posix = std::env::var_os("POSIXLY_CORRECT").is_some();
    let mut g = Getopt::new(args, 3, &specs, posix);
    for item in g.by_ref() {
        let (ch, arg) = match item {
            Ok(v) => v,
            Err(e) => {
                crate::out::err_line(&e.message(&args[0]));
                try_help();
                return Err(End::Exit(64));
            }
        };
        let arg = arg.unwrap_or_default();
        match ch {
            b'a' => opts::set_address(&mut opts, &arg)?,
            b'p' => opts::set_port(&mut opts, &arg)?,
            b'r' => opts.raw = true,
            b'v' => opts.verbose = true,
            b'T' => opts.elapsed = true,
            b'h' => {
                subcommand_usage(cmd, sub, &[]);
                return Err(End::Exit(0));
            }
            _ => match cmd.name {
                "vdi" => opts::vdi_option(&mut opts.vdi, ch, &arg)?,
                "cluster" => opts::cluster_option(&mut opts.cluster, ch, &arg)?,
                "node" => opts::node_option(&mut opts.node, ch),
                "upgrade" => opts::upgrade_option(ch, &arg)?,
                // benchmark: -w/-t/-n are taken as given by the original.
                _ => {}
            },
        }
    }
    let operands = g.into_operands();

    let mut ctx = Ctx {
        cmd,
        sub,
        stack: Vec::new(),
        opts,
        operands,
        next: 0,
        net: Net::default(),
        nodes: Vec::new(),
        epoch: 0,
        nr_zones: 0,
    };
    if sub.flags & NL != 0 {
        ctx.update_node_list().await?;
    }
    if sub.flags & ARG != 0 && ctx.operands.is_empty() {
        ctx.usage();
        return Err(End::Exit(64));
    }
    let code = match dispatch(&mut ctx, sub).await {
        Ok(()) => 0,
        Err(End::Ret(64)) => {
            ctx.usage();
            return Err(End::Exit(64));
        }
        Err(End::Ret(code)) => code,
        Err(e @ End::Exit(_)) => return Err(e),
    };
    if ctx.opts.elapsed {
        out!(
            "\nElapsed time: {:.3} seconds\n",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(code)
}

/// Runs `sub`: its action, or the nested subcommand named by the next
/// operand (the original's `do_generic_subcommand`).
async fn dispatch(ctx: &mut Ctx, sub: &'static Sub) -> Res<()> {
    if sub.subs.is_empty() {
        return match sub.action {
            Some(a) => Box::pin(run_action(ctx, a)).await,
            None => not_supported(ctx),
        };
    }
    let chosen = match ctx.rest().first() {
        None if sub.default_first => {
            ctx.update_node_list().await?;
            return Box::pin(dispatch(ctx, &sub.subs[0])).await;
        }
        Some(name) => find_sub(sub.subs, name),
        None => None,
    };
    let Some(n) = chosen else {
        ctx.usage();
        return Err(End::Exit(1));
    };
    ctx.stack.push(n);
    if n.flags & NL != 0 {
        ctx.update_node_list().await?;
    }
    ctx.next += 1;
    if n.flags & ARG != 0 && ctx.rest().first().is_none_or(|a| a.is_empty()) {
        ctx.usage();
        return Err(End::Exit(64));
    }
    match Box::pin(dispatch(ctx, n)).await {
        Err(End::Ret(64)) => {
            ctx.usage();
            Err(End::Exit(64))
        }
        r => r,
    }
}

fn not_supported(ctx: &Ctx) -> Res<()> {
    let mut path = format!("dog {} {}", ctx.cmd.name, ctx.sub.name);
    for s in &ctx.stack {
        path.push(' ');
        path.push_str(s.name);
    }
    err!("{path} is not supported yet");
    Err(End::Exit(1))
}

async fn run_action(ctx: &mut Ctx, a: Action) -> Res<()> {
    match a {
        Action::ClusterInfo => cmd::cluster::info(ctx).await,
        Action::ClusterFormat => cmd::cluster::format(ctx).await,
        Action::ClusterShutdown => cmd::cluster::shutdown(ctx).await,
        Action::ClusterReweight => cmd::cluster::reweight(ctx).await,
        Action::ClusterRecoverForce => cmd::cluster::recover_force(ctx).await,
        Action::ClusterRecoverEnable => cmd::cluster::recover_switch(ctx, true).await,
        Action::ClusterRecoverDisable => cmd::cluster::recover_switch(ctx, false).await,
        Action::NodeKill => cmd::node::kill(ctx).await,
        Action::NodeList => cmd::node::list(ctx),
        Action::NodeInfo => cmd::node::info(ctx).await,
        Action::NodeRecoveryInfo => cmd::node::recovery_info(ctx).await,
        Action::NodeRecoverySetThrottle => cmd::node::recovery_set_throttle(ctx).await,
        Action::NodeRecoveryGetThrottle => cmd::node::recovery_get_throttle(ctx).await,
        Action::NodeMdInfo => cmd::md::info(ctx).await,
        Action::NodeMdPlug => cmd::md::plug(ctx, true).await,
        Action::NodeMdUnplug => cmd::md::plug(ctx, false).await,
        Action::NodeWorker => cmd::node::worker(ctx).await,
        Action::NodeScrubStatus => cmd::node::scrub(ctx, sd_proto::scrub_cmd::STATUS).await,
        Action::NodeScrubStart => cmd::node::scrub(ctx, sd_proto::scrub_cmd::START).await,
        Action::NodeScrubStop => cmd::node::scrub(ctx, sd_proto::scrub_cmd::STOP).await,
        Action::VdiCreate => cmd::vdi::create(ctx).await,
        Action::VdiDelete => cmd::vdi::delete(ctx).await,
        Action::VdiList => cmd::vdi::list(ctx).await,
        Action::VdiRead => cmd::vdi::read(ctx).await,
        Action::VdiWrite => cmd::vdi::write(ctx).await,
        Action::VdiObjectLocation => cmd::object::object_location(ctx).await,
        Action::VdiObjectMap => cmd::object::object_map(ctx).await,
        Action::VdiObjectDumpInode => cmd::object::dump_inode(ctx),
        Action::VdiTrack => cmd::object::track(ctx).await,
        Action::VdiSetattr => cmd::attr::setattr(ctx).await,
        Action::VdiGetattr => cmd::attr::getattr(ctx).await,
        Action::VdiLockList => cmd::lock::list(ctx).await,
        Action::VdiLockUnlock => cmd::lock::unlock(ctx).await,
        Action::VdiBackup => cmd::backup::backup(ctx).await,
        Action::VdiRestore => cmd::backup::restore(ctx).await,
        Action::VdiCheck => cmd::check::vdi_check(ctx).await,
        Action::ClusterCheck => cmd::check::cluster_check(ctx).await,
        Action::VdiSnapshot => cmd::vdi::snapshot(ctx).await,
        Action::VdiClone => cmd::vdi::clone(ctx).await,
        Action::VdiRollback => cmd::vdi::rollback(ctx).await,
        Action::VdiResize => cmd::vdi::resize(ctx).await,
        Action::VdiTree => cmd::tree::tree(ctx).await,
        Action::VdiGraph => cmd::tree::graph(ctx).await,
        Action::VdiAlterCopy => cmd::vdi::alter_copy(ctx).await,
        Action::ClusterAlterCopy => cmd::cluster::alter_copy(ctx).await,
    }
}
