//! `dog vdi tree` and `dog vdi graph` (CLI.md §2.3.7, §2.3.8), and the
//! VDI family tree they and `vdi alter-copy` share (the original's
//! `treeview.c`).

use super::vdi::parse_vdi;
use crate::app::Ctx;
use crate::out::{out_bytes, stdout_is_tty};
use crate::text::{local_time, strnumber};
use crate::{out, End, Res};
use sd_proto::InodeHeader;

/// One VDI in the family tree.
struct Node {
    name: Vec<u8>,
    label: Vec<u8>,
    vid: u32,
    pvid: u32,
    highlight: bool,
    children: Vec<usize>,
}

/// The VDI families as the original's `treeview.c` builds them: a VDI
/// hangs under the VDI whose vid is its parent id **and whose name is
/// the same**; anything else (a clone, a VDI whose parent is gone) starts
/// a family of its own. Children keep the order they were added in
/// (ascending vid), and a VDI added before its parent moves under it
/// at the end (the original's `compaction`).
#[derive(Default)]
pub struct VdiTree {
    nodes: Vec<Node>,
    roots: Vec<usize>,
}

impl VdiTree {
    fn find(&self, vid: u32, name: &[u8]) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.vid == vid && n.name == name)
    }

    /// Adds a VDI (the original's `add_vdi_tree`).
    pub fn add(&mut self, name: &[u8], label: &[u8], vid: u32, pvid: u32, highlight: bool) {
        let parent = self.find(pvid, name);
        self.nodes.push(Node {
            name: name.to_vec(),
            label: label.to_vec(),
            vid,
            pvid,
            highlight,
            children: Vec::new(),
        });
        let i = self.nodes.len() - 1;
        match parent {
            Some(p) => self.nodes[p].children.push(i),
            None => self.roots.push(i),
        }
    }

    /// Moves top-level VDIs whose parent was added after them under it.
    fn compact(&mut self) {
        let roots = std::mem::take(&mut self.roots);
        for r in roots {
            let (pvid, name) = (self.nodes[r].pvid, self.nodes[r].name.clone());
            match self.find(pvid, &name) {
                Some(p) if p != r => self.nodes[p].children.push(r),
                _ => self.roots.push(r),
            }
        }
    }

    /// True if the VDI `vid` named `name` has no parent and no child of
    /// the same name (`None` if it is not in the tree). As in the
    /// original, the tree is not compacted first.
    pub fn is_standalone(&self, vid: u32, name: &[u8]) -> Option<bool> {
        let n = &self.nodes[self.find(vid, name)?];
        Some(n.pvid == 0 && n.children.is_empty())
    }

    /// The text the original's `dump_tree` prints.
    pub fn render(mut self) -> Vec<u8> {
        self.compact();
        let mut out = Vec::new();
        let mut width = Vec::new();
        let mut more = Vec::new();
        for &r in &self.roots {
            out.extend_from_slice(&self.nodes[r].name);
            width.clear();
            more.clear();
            width.push(self.nodes[r].name.len());
            more.push(false);
            self.dump(&mut out, &mut width, &mut more, r, 1, true, true);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn dump(
        &self,
        out: &mut Vec<u8>,
        width: &mut Vec<usize>,
        more: &mut Vec<bool>,
        cur: usize,
        level: usize,
        first: bool,
        last: bool,
    ) {
        let spaces = |out: &mut Vec<u8>, n: usize| out.extend(std::iter::repeat_n(b' ', n));
        if first {
            out.extend_from_slice(if last { b"---" } else { b"-+-" });
        } else {
            for lvl in 0..level - 1 {
                spaces(out, width[lvl] + 1);
                out.extend_from_slice(if more[lvl + 1] { b"| " } else { b"  " });
            }
            spaces(out, width[level - 1] + 1);
            out.extend_from_slice(if last { b"`-" } else { b"|-" });
        }
        let n = &self.nodes[cur];
        if n.highlight {
            out.extend_from_slice(b"\x1b[1m");
        }
        out.extend_from_slice(&n.label);
        if n.highlight {
            out.extend_from_slice(b"\x1b[0m");
        }
        if n.children.is_empty() {
            out.push(b'\n');
            return;
        }
        width.resize(level + 1, 0);
        more.resize(level + 1, false);
        more[level] = !last;
        width[level] = n.label.len();
        let k = n.children.len();
        for (j, &c) in n.children.iter().enumerate() {
            self.dump(out, width, more, c, level + 1, j == 0, j + 1 == k);
        }
    }
}

/// Builds the tree of every live VDI, labelled for `vdi tree`: a
/// snapshot by its creation time, the working VDI `(you are here)`
/// (bold on a terminal).
pub async fn load_tree(ctx: &mut Ctx) -> Res<VdiTree> {
    let highlight = stdout_is_tty() && !ctx.opts.raw;
    let mut tree = VdiTree::default();
    parse_vdi(ctx, false, |vid, i, _| {
        let h = &i.header;
        let label = if h.is_snapshot() {
            local_time((h.create_time >> 32) as i64, "[%Y-%m-%d %H:%M]").into_bytes()
        } else {
            b"(you are here)".to_vec()
        };
        tree.add(
            h.name_bytes(),
            &label,
            vid,
            h.parent_vdi_id,
            highlight && !h.is_snapshot(),
        );
    })
    .await
    .map_err(|_| End::Ret(2))?;
    Ok(tree)
}

/// `vdi tree`.
pub async fn tree(ctx: &mut Ctx) -> Res<()> {
    let t = load_tree(ctx).await?;
    out_bytes(&t.render());
    Ok(())
}

/// One VDI of `vdi graph`.
fn graph_node(vid: u32, h: &InodeHeader, snapid: u32) -> Vec<u8> {
    let secs = (h.create_time >> 32) as i64;
    let name = h.name_bytes();
    let mut v = format!(
        "  \"{:x}\" -> \"{vid:x}\";\n  \"{vid:x}\" [\n    group = \"",
        h.parent_vdi_id
    )
    .into_bytes();
    v.extend_from_slice(name);
    v.extend_from_slice(b"\",\n    label = \"Name: ");
    v.extend(std::iter::repeat_n(
        b' ',
        10usize.saturating_sub(name.len()),
    ));
    v.extend_from_slice(name);
    v.extend(
        format!(
            "\\nTag:  {snapid:10x}\\nSize: {:>10}\\nDate: {:>10}\\nTime: {:>10}",
            strnumber(h.vdi_size, false),
            local_time(secs, "%Y-%m-%d"),
            local_time(secs, "%H:%M:%S")
        )
        .bytes(),
    );
    if h.is_snapshot() {
        v.extend_from_slice(b"\"\n  ];\n\n");
    } else {
        v.extend_from_slice(b"\",\n    color=\"red\"\n  ];\n\n");
    }
    v
}

/// `vdi graph`: Graphviz DOT of every VDI and its parent.
pub async fn graph(ctx: &mut Ctx) -> Res<()> {
    out!("digraph G {{\n  node [shape = \"box\", fontname = \"Courier\"];\n\n  \"0\" [shape = \"ellipse\", label = \"root\"];\n\n");
    parse_vdi(ctx, false, |vid, i, snapid| {
        out_bytes(&graph_node(vid, &i.header, snapid))
    })
    .await
    .map_err(|_| End::Ret(2))?;
    out!("}}\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &[u8] = b"[DATE]xxxxxxxxxxxx";

    fn render(adds: &[(&[u8], u32, u32, bool)]) -> String {
        let mut t = VdiTree::default();
        for &(name, vid, pvid, snap) in adds {
            let label: &[u8] = if snap { D } else { b"(you are here)" };
            t.add(name, label, vid, pvid, false);
        }
        String::from_utf8(t.render())
            .unwrap()
            .replace("xxxxxxxxxxxx", "")
    }

    #[test]
    fn golden_039_and_017_layouts() {
        // test: snapshot 1, snapshot 2 from 1, working VDI from 1.
        assert_eq!(
            render(&[
                (b"test", 1, 0, true),
                (b"test", 2, 1, true),
                (b"test", 3, 1, false)
            ]),
            "test---[DATE]-+-[DATE]\n                          `-(you are here)\n"
        );
        assert_eq!(
            render(&[
                (b"test2", 1, 0, true),
                (b"test2", 2, 1, true),
                (b"test2", 3, 1, true),
                (b"test2", 4, 3, false)
            ]),
            "test2---[DATE]-+-[DATE]\n                           `-[DATE]---(you are here)\n"
        );
        assert_eq!(
            render(&[
                (b"test", 1, 0, true),
                (b"test", 2, 1, true),
                (b"test", 3, 2, true),
                (b"test", 4, 1, true),
                (b"test", 5, 4, true),
                (b"test", 6, 1, true),
                (b"test", 7, 3, false),
            ]),
            "test---[DATE]-+-[DATE]---[DATE]---(you are here)\n                          |-[DATE]---[DATE]\n                          `-[DATE]\n"
        );
    }

    #[test]
    fn clones_are_roots_and_late_parents_adopt() {
        // A clone (other name) of snapshot 1 is a family of its own; a
        // child listed before its parent moves under it.
        assert_eq!(
            render(&[(b"c", 1, 5, false), (b"v", 4, 6, false), (b"v", 6, 0, true)]),
            "c---(you are here)\nv---[DATE]---(you are here)\n"
        );
        let mut t = VdiTree::default();
        t.add(b"v", b"s", 1, 0, false);
        t.add(b"v", b"w", 2, 1, false);
        t.add(b"c", b"w", 3, 1, false);
        t.add(b"a", b"w", 4, 0, false);
        assert_eq!(t.is_standalone(1, b"v"), Some(false));
        assert_eq!(t.is_standalone(2, b"v"), Some(false));
        assert_eq!(t.is_standalone(3, b"c"), Some(false));
        assert_eq!(t.is_standalone(4, b"a"), Some(true));
        assert_eq!(t.is_standalone(9, b"a"), None);
    }

    #[test]
    fn highlight_wraps_the_label() {
        let mut t = VdiTree::default();
        t.add(b"ec", b"(you are here)", 1, 0, true);
        assert_eq!(t.render(), b"ec---\x1b[1m(you are here)\x1b[0m\n");
    }

    #[test]
    fn graph_labels_match_the_transcript() {
        // SAFETY: test setup of the process time zone; tests that read
        // TZ all set the same value.
        unsafe { std::env::set_var("TZ", "UTC") };
        crate::text::init_timezone();
        let mut h = InodeHeader {
            vdi_size: 20 << 30,
            parent_vdi_id: 0xc52128,
            create_time: 1795252337u64 << 32,
            ..Default::default()
        };
        h.name[..7].copy_from_slice(b"replica");
        assert_eq!(
            String::from_utf8(graph_node(0xc52129, &h, 0)).unwrap(),
            "  \"c52128\" -> \"c52129\";\n  \"c52129\" [\n    group = \"replica\",\n    label = \"Name:    replica\\nTag:           0\\nSize:      20 GB\\nDate: 2026-11-21\\nTime:   09:12:17\",\n    color=\"red\"\n  ];\n\n"
        );
    }
}
