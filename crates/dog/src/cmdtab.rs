//! The command tree of the original dog, in its order, with every
//! subcommand's operand text, option letters, description, flags and
//! nested subcommands (CLI.md §2). Help and usage texts are generated from
//! this table exactly as the original generates them from its own, and
//! the table says which subcommands are implemented: an entry whose
//! `action` is `None` still parses and prints its help but reports that it
//! is not supported yet. Filling one in is a matter of adding an [`Action`].

use crate::getopt::OptSpec;

/// Needs the node list before running (step 4 of §1.1).
pub const NL: u8 = 1;
/// Needs at least one operand (step 5 of §1.1).
pub const ARG: u8 = 2;
/// This project's addition: runs like any subcommand but is left out of
/// the original's command listings, which stay byte-identical.
pub const EXT: u8 = 4;

/// An option as declared by the original: letter, long name, whether it
/// takes an argument, help text (which may contain a newline plus the
/// 26-space continuation indent).
#[derive(Clone, Copy, Debug)]
pub struct OptDesc {
    pub ch: u8,
    pub name: &'static str,
    pub has_arg: bool,
    pub desc: &'static str,
}

const fn o(ch: u8, name: &'static str, has_arg: bool, desc: &'static str) -> OptDesc {
    OptDesc {
        ch,
        name,
        has_arg,
        desc,
    }
}

/// Options every command understands (when its letter set lists them).
pub const COMMON_OPTS: &[OptDesc] = &[
    o(b'a', "address", true, "specify the daemon address (default: localhost)"),
    o(b'p', "port", true, "specify the daemon port"),
    o(
        b'r',
        "raw",
        false,
        "raw output mode: omit headers, separate fields with\n                          single spaces and print all sizes in decimal bytes",
    ),
    o(b'v', "verbose", false, "print more information than default"),
    o(b'h', "help", false, "display this help and exit"),
    o(b'T', "time", false, "show elapsed time"),
];

const VDI_OPTS: &[OptDesc] = &[
    o(b'P', "prealloc", false, "preallocate all the data objects"),
    o(b'n', "no-share", false, "share nothing with its parent"),
    o(b'i', "index", true, "specify the index of data objects"),
    o(b's', "snapshot", true, "specify a snapshot id or tag name"),
    o(b'x', "exclusive", false, "write in an exclusive mode"),
    o(b'd', "delete", false, "delete a key"),
    o(b'w', "writeback", false, "use writeback mode"),
    o(b'c', "copies", true, "specify the data redundancy level"),
    o(b'F', "from", true, "create a differential backup from the snapshot"),
    o(b'f', "force", false, "do operation forcibly"),
    o(b'y', "hyper", false, "create a hyper volume"),
    o(b'o', "oid", true, "specify the object id of the tracking object"),
    o(
        b'e',
        "exist",
        false,
        "only check objects exist or not,\n                          neither comparing nor repairing",
    ),
    o(b'z', "block_size_shift", true, "specify the bit shift num for data object size"),
    o(
        b'R',
        "reduce-identical-snapshots",
        false,
        "do not create snapshot if working VDI doesn't have its own objects",
    ),
    o(
        b'B',
        "nr-batched-reclamation",
        true,
        "specify a number of batchedreclamation during VDI deletion",
    ),
    o(
        b'I',
        "reclamation-interval",
        true,
        "specify how long (unit: second)in reclamation loop during VDI deletion",
    ),
    o(
        b'm',
        "max-reclaim",
        true,
        "specify the maximum number of reclaimed objects (if this option is specified, an inode object won't be reclaimed)",
    ),
];

const NODE_OPTS: &[OptDesc] = &[
    o(b'A', "all", false, "show md information of all the nodes"),
    o(
        b'P',
        "progress",
        false,
        "show progress of recovery in the node",
    ),
    o(b'w', "watch", false, "watch the stat every second"),
    o(b'l', "local", false, "issue request to local node"),
    o(b'f', "force", false, "ignore the confirmation"),
];

const CLUSTER_OPTS: &[OptDesc] = &[
    o(b'b', "store", true, "specify backend store"),
    o(
        b'c',
        "copies",
        true,
        "specify the default data redundancy (number of copies)",
    ),
    o(b'f', "force", false, "do not prompt for confirmation"),
    o(
        b'F',
        "avoid-diskfull",
        false,
        "skip recovery if recovery process can cause disk full",
    ),
    o(b'l', "lock", false, "Lock vdi to exclude multiple users"),
    o(
        b'm',
        "multithread",
        false,
        "use multi-thread for 'cluster snapshot save'",
    ),
    o(b'R', "recyclevid", false, "enable recycling of VID"),
    o(
        b't',
        "strict",
        false,
        "do not serve write request if number of nodes is not sufficient",
    ),
    o(
        b'z',
        "block_size_shift",
        true,
        "specify the shift num of default data object size",
    ),
    o(
        b'V',
        "fixedvnodes",
        false,
        "disable automatic vnodes calculation",
    ),
    o(
        b'd',
        "diff",
        false,
        "just output the changes between the two adjacent epochesfor cluster info",
    ),
];

const UPGRADE_OPTS: &[OptDesc] = &[o(b'o', "orig-version", true, "version of converting file")];

const BENCHMARK_OPTS: &[OptDesc] = &[
    o(b'w', "workqueue", true, "specify workqueue type"),
    o(b'f', "force", false, "do not prompt for confirmation"),
    o(
        b't',
        "total",
        true,
        "a number of total operation (e.g. I/O request)",
    ),
    o(
        b'n',
        "nr-threads",
        true,
        "a number of worker threads (only used for fixed workqueue)",
    ),
];

/// The implemented subcommands. Anything not listed here is in the table
/// with `action: None`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    ClusterInfo,
    ClusterFormat,
    ClusterShutdown,
    ClusterReweight,
    ClusterRecoverForce,
    ClusterRecoverEnable,
    ClusterRecoverDisable,
    NodeKill,
    NodeList,
    NodeInfo,
    NodeRecoveryInfo,
    NodeRecoverySetThrottle,
    NodeRecoveryGetThrottle,
    NodeMdInfo,
    NodeMdPlug,
    NodeMdUnplug,
    NodeWorker,
    NodeScrubStatus,
    NodeScrubStart,
    NodeScrubStop,
    VdiCreate,
    VdiDelete,
    VdiList,
    VdiRead,
    VdiWrite,
    VdiObjectLocation,
    VdiSnapshot,
    VdiClone,
    VdiRollback,
    VdiResize,
    VdiTree,
    VdiGraph,
    VdiAlterCopy,
    ClusterAlterCopy,
    VdiObjectMap,
    VdiObjectDumpInode,
    VdiTrack,
    VdiSetattr,
    VdiGetattr,
    VdiLockList,
    VdiLockUnlock,
    VdiBackup,
    VdiRestore,
    VdiCheck,
    ClusterCheck,
}

/// A subcommand (or nested subcommand) of the tree.
#[derive(Debug)]
pub struct Sub {
    pub name: &'static str,
    /// Operand text of the usage line (level-2 subcommands only).
    pub arg: Option<&'static str>,
    /// Accepted option letters, in usage order (level-2 subcommands only;
    /// nested subcommands use their parent's).
    pub opts: &'static str,
    pub desc: &'static str,
    /// [`NL`] | [`ARG`].
    pub flags: u8,
    /// Nested subcommands, chosen by the first operand.
    pub subs: &'static [Sub],
    /// With nested subcommands and no operand, run the first one
    /// (`node recovery` = `node recovery info`).
    pub default_first: bool,
    /// What runs; `None` = not supported yet.
    pub action: Option<Action>,
}

/// A top-level command.
#[derive(Debug)]
pub struct Command {
    pub name: &'static str,
    pub subs: &'static [Sub],
    /// Command-specific options (after the common ones when looked up).
    pub opts: &'static [OptDesc],
}

const fn leaf(
    name: &'static str,
    arg: Option<&'static str>,
    opts: &'static str,
    desc: &'static str,
    flags: u8,
    action: Option<Action>,
) -> Sub {
    Sub {
        name,
        arg,
        opts,
        desc,
        flags,
        subs: &[],
        default_first: false,
        action,
    }
}

const fn group(
    name: &'static str,
    arg: Option<&'static str>,
    opts: &'static str,
    desc: &'static str,
    flags: u8,
    subs: &'static [Sub],
) -> Sub {
    Sub {
        name,
        arg,
        opts,
        desc,
        flags,
        subs,
        default_first: false,
        action: None,
    }
}

const fn nested(name: &'static str, desc: &'static str, flags: u8, action: Option<Action>) -> Sub {
    leaf(name, None, "", desc, flags, action)
}

use Action::*;

const VDI_OBJECT: &[Sub] = &[
    nested(
        "location",
        "show object location information",
        NL | ARG,
        Some(VdiObjectLocation),
    ),
    nested(
        "map",
        "show object map information",
        ARG,
        Some(VdiObjectMap),
    ),
    nested(
        "dump-inode",
        "dump inode information",
        ARG,
        Some(VdiObjectDumpInode),
    ),
];

const VDI_LOCK: &[Sub] = &[
    nested("list", "list locked VDIs", 0, Some(VdiLockList)),
    nested(
        "unlock",
        "unlock locked VDI forcibly",
        ARG,
        Some(VdiLockUnlock),
    ),
];

const VDI: &[Sub] = &[
    leaf(
        "check",
        Some("<vdiname>"),
        "seaphT",
        "check and repair image's consistency",
        NL | ARG,
        Some(VdiCheck),
    ),
    leaf(
        "create",
        Some("<vdiname> <size>"),
        "PycaphrvzT",
        "create an image",
        NL | ARG,
        Some(VdiCreate),
    ),
    leaf(
        "snapshot",
        Some("<vdiname>"),
        "saphrvTR",
        "create a snapshot",
        ARG,
        Some(VdiSnapshot),
    ),
    leaf(
        "clone",
        Some("<src vdi> <dst vdi>"),
        "sPnaphrvT",
        "clone an image",
        ARG,
        Some(VdiClone),
    ),
    leaf(
        "delete",
        Some("<vdiname>"),
        "saphTBIm",
        "delete an image",
        ARG,
        Some(VdiDelete),
    ),
    leaf(
        "rollback",
        Some("<vdiname>"),
        "saphfrvTBI",
        "rollback to a snapshot",
        ARG,
        Some(VdiRollback),
    ),
    leaf(
        "list",
        Some("[vdiname]"),
        "aprhoT",
        "list images",
        0,
        Some(VdiList),
    ),
    leaf(
        "tree",
        None,
        "aphT",
        "show images in tree view format",
        0,
        Some(VdiTree),
    ),
    leaf(
        "graph",
        None,
        "aphT",
        "show images in Graphviz dot format",
        0,
        Some(VdiGraph),
    ),
    group(
        "object",
        Some("<vdiname>"),
        "isaphT",
        "show object information in the image",
        ARG,
        VDI_OBJECT,
    ),
    leaf(
        "track",
        Some("<vdiname>"),
        "isaphoT",
        "show the object epoch trace in the image",
        NL | ARG,
        Some(VdiTrack),
    ),
    leaf(
        "setattr",
        Some("<vdiname> <key> [value]"),
        "dxaphT",
        "set a VDI attribute",
        ARG,
        Some(VdiSetattr),
    ),
    leaf(
        "getattr",
        Some("<vdiname> <key>"),
        "aphT",
        "get a VDI attribute",
        ARG,
        Some(VdiGetattr),
    ),
    leaf(
        "resize",
        Some("<vdiname> <new size>"),
        "aphT",
        "resize an image",
        ARG,
        Some(VdiResize),
    ),
    leaf(
        "read",
        Some("<vdiname> [<offset> [<len>]]"),
        "saphT",
        "read data from an image",
        ARG,
        Some(VdiRead),
    ),
    leaf(
        "write",
        Some("<vdiname> [<offset> [<len>]]"),
        "apwhT",
        "write data to an image",
        ARG,
        Some(VdiWrite),
    ),
    leaf(
        "backup",
        Some("<vdiname>"),
        "sFaphT",
        "create an incremental backup between two snapshots and outputs to STDOUT",
        NL | ARG,
        Some(VdiBackup),
    ),
    leaf(
        "restore",
        Some("<vdiname>"),
        "saphTBI",
        "restore snapshot images from a backup provided in STDIN",
        NL | ARG,
        Some(VdiRestore),
    ),
    leaf(
        "alter-copy",
        Some("<vdiname>"),
        "caphTf",
        "set the vdi's redundancy level",
        NL | ARG,
        Some(VdiAlterCopy),
    ),
    group(
        "lock",
        None,
        "saphT",
        "See 'dog vdi lock' for more information",
        ARG,
        VDI_LOCK,
    ),
];

const NODE_RECOVERY: &[Sub] = &[
    nested(
        "info",
        "show recovery information of nodes (default)",
        NL,
        Some(NodeRecoveryInfo),
    ),
    nested(
        "set-throttle",
        "set new throttling",
        NL | ARG,
        Some(NodeRecoverySetThrottle),
    ),
    nested(
        "get-throttle",
        "get current throttling",
        NL,
        Some(NodeRecoveryGetThrottle),
    ),
];

const NODE_SCRUB: &[Sub] = &[
    nested(
        "status",
        "show the scrub of every node (default)",
        NL,
        Some(NodeScrubStatus),
    ),
    nested(
        "start",
        "check every object of every node against its checksums",
        NL,
        Some(NodeScrubStart),
    ),
    nested(
        "stop",
        "stop the scrub on every node",
        NL,
        Some(NodeScrubStop),
    ),
];

const NODE_MD: &[Sub] = &[
    nested("info", "show multi-disk information", NL, Some(NodeMdInfo)),
    nested("plug", "plug more disk(s) into node", ARG, Some(NodeMdPlug)),
    nested(
        "unplug",
        "unplug disk(s) from node",
        ARG,
        Some(NodeMdUnplug),
    ),
];

const NODE_LOG_LEVEL: &[Sub] = &[
    nested("set", "set new loglevel", ARG, None),
    nested("get", "get current loglevel", 0, None),
    nested("list", "list available loglevels", 0, None),
];

const NODE_LOG: &[Sub] = &[Sub {
    name: "level",
    arg: None,
    opts: "",
    desc: "manipulate loglevel",
    flags: ARG,
    subs: NODE_LOG_LEVEL,
    default_first: false,
    action: None,
}];

const NODE_VNODES: &[Sub] = &[nested("set", "set new vnodes", ARG, None)];

const NODE: &[Sub] = &[
    leaf(
        "kill",
        Some("<node id>"),
        "aprhlT",
        "kill node",
        NL,
        Some(NodeKill),
    ),
    leaf("list", None, "aprhT", "list nodes", NL, Some(NodeList)),
    leaf(
        "info",
        None,
        "aprhT",
        "show information about each node",
        NL,
        Some(NodeInfo),
    ),
    Sub {
        name: "recovery",
        arg: Some("<max> <interval>"),
        opts: "aphPrT",
        desc: "show recovery information or set/get recovery speed throttling of nodes",
        flags: 0,
        subs: NODE_RECOVERY,
        default_first: true,
        action: None,
    },
    group(
        "md",
        Some("[disks]"),
        "aprAfhT",
        "See 'dog node md' for more information",
        ARG,
        NODE_MD,
    ),
    leaf(
        "stat",
        None,
        "aprwhT",
        "show stat information about the node",
        0,
        None,
    ),
    group(
        "log",
        None,
        "aphT",
        "show or set log level of the node",
        ARG,
        NODE_LOG,
    ),
    group(
        "vnodes",
        Some("<num of vnodes>"),
        "aph",
        "set new vnodes",
        ARG,
        NODE_VNODES,
    ),
    leaf(
        "worker",
        None,
        "aprhT",
        "show the background workers of the node",
        EXT,
        Some(NodeWorker),
    ),
    Sub {
        name: "scrub",
        arg: None,
        opts: "aprhT",
        desc: "verify the objects of every node against their checksums",
        flags: EXT,
        subs: NODE_SCRUB,
        default_first: true,
        action: None,
    },
    leaf(
        "format",
        Some("<directory of sheep> <a name of store format>"),
        "aphT",
        "initialize store format of the node",
        ARG,
        None,
    ),
];

const CLUSTER_SNAPSHOT: &[Sub] = &[
    nested("save", "save snapshot to localpath", NL | ARG, None),
    nested("list", "list snapshot of localpath", ARG, None),
    nested("load", "load snapshot from localpath", NL | ARG, None),
    nested("show", "show vdi list from snapshot", NL | ARG, None),
];

const CLUSTER_RECOVER: &[Sub] = &[
    nested(
        "force",
        "force recover cluster immediately",
        0,
        Some(ClusterRecoverForce),
    ),
    nested(
        "enable",
        "enable automatic recovery and run once recover if necessary",
        0,
        Some(ClusterRecoverEnable),
    ),
    nested(
        "disable",
        "disable automatic recovery",
        0,
        Some(ClusterRecoverDisable),
    ),
];

const CLUSTER: &[Sub] = &[
    leaf(
        "info",
        None,
        "aprhvTd",
        "show cluster information",
        NL,
        Some(ClusterInfo),
    ),
    leaf(
        "format",
        None,
        "bcltaphzTVRfF",
        "create a Sheepdog store",
        NL,
        Some(ClusterFormat),
    ),
    leaf(
        "shutdown",
        None,
        "aphT",
        "stop Sheepdog",
        0,
        Some(ClusterShutdown),
    ),
    group(
        "snapshot",
        Some("<tag|idx> <path> [vdi1] [vdi2] ..."),
        "aphTm",
        "snapshot/restore the cluster",
        ARG,
        CLUSTER_SNAPSHOT,
    ),
    group(
        "recover",
        None,
        "afphT",
        "See 'dog cluster recover' for more information",
        ARG,
        CLUSTER_RECOVER,
    ),
    leaf(
        "reweight",
        None,
        "aphT",
        "reweight the cluster",
        0,
        Some(ClusterReweight),
    ),
    leaf(
        "check",
        None,
        "aphT",
        "check and repair cluster",
        NL,
        Some(ClusterCheck),
    ),
    leaf(
        "alter-copy",
        None,
        "aphTcf",
        "set the cluster's redundancy level",
        NL,
        Some(ClusterAlterCopy),
    ),
];

const UPGRADE: &[Sub] = &[
    leaf(
        "inode-convert",
        Some("<path of original inode file> <path of new inode file>"),
        "hTo",
        "upgrade inode object file",
        ARG,
        None,
    ),
    leaf(
        "epoch-convert",
        Some("<path of original epoch log file> <path of new epoch log file>"),
        "hTo",
        "upgrade epoch log file",
        ARG,
        None,
    ),
    leaf(
        "config-convert",
        Some("<path of original config file> <path of new config file>"),
        "hT",
        "upgrade config file",
        ARG,
        None,
    ),
    leaf(
        "object-location",
        Some("<path of latest epoch file> <oid>"),
        "hT",
        "print object location",
        ARG,
        None,
    ),
];

const BENCHMARK: &[Sub] = &[leaf(
    "io",
    Some("<vdiname>"),
    "aprhTfwtn",
    "benchmark I/O performance",
    NL | ARG,
    None,
)];

/// The commands in the original's order (the reference build has no
/// `trace` and no `nfs`).
pub const COMMANDS: &[Command] = &[
    Command {
        name: "vdi",
        subs: VDI,
        opts: VDI_OPTS,
    },
    Command {
        name: "node",
        subs: NODE,
        opts: NODE_OPTS,
    },
    Command {
        name: "cluster",
        subs: CLUSTER,
        opts: CLUSTER_OPTS,
    },
    Command {
        name: "upgrade",
        subs: UPGRADE,
        opts: UPGRADE_OPTS,
    },
    Command {
        name: "benchmark",
        subs: BENCHMARK,
        opts: BENCHMARK_OPTS,
    },
];

impl Command {
    /// The description of option `ch` as this command sees it: common
    /// options first, then its own (the original's `find_opt`).
    pub fn find_opt(&self, ch: u8) -> &'static OptDesc {
        COMMON_OPTS
            .iter()
            .chain(self.opts)
            .find(|d| d.ch == ch)
            .expect("every letter of an option set is declared")
    }

    /// The getopt specification of a subcommand's letter set.
    pub fn specs(&self, letters: &str) -> Vec<OptSpec> {
        letters
            .bytes()
            .map(|c| {
                let d = self.find_opt(c);
                OptSpec {
                    short: d.ch,
                    long: d.name,
                    has_arg: d.has_arg,
                }
            })
            .collect()
    }
}

/// Looks a command up by name.
pub fn find_command(name: &[u8]) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name.as_bytes() == name)
}

/// Looks a subcommand up by name in `subs`.
pub fn find_sub<'a>(subs: &'a [Sub], name: &[u8]) -> Option<&'a Sub> {
    subs.iter().find(|s| s.name.as_bytes() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_letter_is_declared_once_per_command() {
        fn walk(c: &Command, s: &Sub) {
            let mut seen = Vec::new();
            for ch in s.opts.bytes() {
                c.find_opt(ch);
                assert!(!seen.contains(&ch), "{} {}: {}", c.name, s.name, ch as char);
                seen.push(ch);
            }
            for n in s.subs {
                walk(c, n);
            }
        }
        for c in COMMANDS {
            for s in c.subs {
                walk(c, s);
            }
        }
    }
}
