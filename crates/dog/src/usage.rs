//! Usage and help texts, generated from the command table by the
//! original's rules (CLI.md §1.5); `original-help.txt` holds the bytes
//! they must reproduce.

use crate::cmdtab::{Command, Sub, COMMANDS};
use crate::{err, out};

/// The version as the original prints it: the package version with `-`
/// replaced by `_`.
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").replace('-', "_")
}

/// The subcommands the original's listings show (not this project's
/// additions, so those listings stay byte-identical).
fn listed(subs: &[Sub]) -> impl Iterator<Item = &Sub> {
    subs.iter().filter(|s| s.flags & crate::cmdtab::EXT == 0)
}

/// The main usage (`dog`, `dog -h`, `dog help`), on stdout.
pub fn main_usage() {
    out!(
        "Sheepdog administrator utility (version {})\nUsage: dog <command> <subcommand> [options]\n\nAvailable commands:\n",
        version()
    );
    for c in COMMANDS {
        for s in listed(c.subs) {
            out!("  {:<24}{}\n", format!("{} {}", c.name, s.name), s.desc);
        }
    }
    out!("\nFor more information, run 'dog <command> <subcommand> --help'.\n");
}

/// The line that follows every usage error (stderr).
pub fn try_help() {
    err!("Try 'dog --help' for more information.");
}

/// `Available <cmd> commands:` and the list of its subcommands (stderr).
pub fn available_commands(c: &Command) {
    err!("Available {} commands:", c.name);
    for s in listed(c.subs) {
        err!("  {} {}", c.name, s.name);
    }
}

/// A subcommand's usage (stdout). `stack` is the path of nested
/// subcommands entered so far; the options and operand text are always
/// those of the level-2 subcommand `sub`.
pub fn subcommand_usage(c: &Command, sub: &Sub, stack: &[&Sub]) {
    out!("Usage: dog {} {}", c.name, sub.name);
    let nested = match stack.last() {
        Some(last) => {
            for s in stack {
                out!(" {}", s.name);
            }
            last.subs
        }
        None => sub.subs,
    };
    match nested {
        [] => {}
        [one] => out!(" {}", one.name),
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.name).collect();
            out!(" {{{}}}", names.join("|"));
        }
    }
    for ch in sub.opts.bytes() {
        let d = c.find_opt(ch);
        if d.has_arg {
            out!(" [-{} {}]", ch as char, d.name);
        } else {
            out!(" [-{}]", ch as char);
        }
    }
    if let Some(arg) = sub.arg {
        out!(" {arg}");
    }
    out!("\n");
    if !nested.is_empty() {
        out!("Available subcommands:\n");
        for s in nested {
            out!("  {:<24}{}\n", s.name, s.desc);
        }
    }
    out!("Options:\n");
    for ch in sub.opts.bytes() {
        let d = c.find_opt(ch);
        out!(
            "  {:<24}{}\n",
            format!("-{}, --{}", ch as char, d.name),
            d.desc
        );
    }
}
