//! `dog vdi lock list|unlock` (CLI.md §2.3.19): the lock states every
//! node keeps per vid (PROTOCOL.md §6.6), listed and force-released.

use super::ret;
use super::vdi::parse_vdi;
use crate::app::Ctx;
use crate::out::{out_bytes, Msg};
use crate::text::{cstr, pad_right};
use crate::{err, out, Res};
use sd_client::vdi::{exec_ok, lookup_vdi};
use sd_client::ClientError;
use sd_proto::*;

/// `vdi_state.lock_state` values.
const LOCK_STATE_UNLOCKED: u32 = 1;
const LOCK_STATE_LOCKED: u32 = 2;
const LOCK_STATE_SHARED: u32 = 3;
/// RELEASE_VDI lock types.
const LOCK_TYPE_NORMAL: u32 = 0;
const LOCK_TYPE_SHARED: u32 = 1;

/// The lock states of all vids (GET_VDI_COPIES, growing the buffer on
/// BUFFER_SMALL), sorted by vid. Prints the original's messages and
/// ends with status 2 on failure.
async fn get_vdi_state(ctx: &mut Ctx) -> Res<Vec<VdiState>> {
    let target = ctx.target();
    let mut len = 512 * VDI_STATE_SIZE;
    let data = loop {
        let mut req = SdReq::new(op::GET_VDI_COPIES);
        req.data_length = len as u32;
        match exec_ok(&mut ctx.net.at(target), &req, &[]).await {
            Ok((_, data)) => break data,
            Err(ClientError::Res(SdRes::BUFFER_SMALL)) if len < 1 << 30 => len *= 2,
            Err(e) => {
                if let ClientError::Res(r) = e {
                    err!("failed to execute SD_OP_GET_VDI_COPIES: {r}");
                }
                err!("Failed to get VDI state");
                return ret(2);
            }
        }
    };
    let mut v: Vec<VdiState> = data
        .chunks_exact(VDI_STATE_SIZE)
        .filter_map(VdiState::decode)
        .collect();
    v.sort_by_key(|s| s.vid);
    Ok(v)
}

/// One `vdi lock list` row.
fn lock_row(vid: u32, h: &InodeHeader, snapid: u32, s: &VdiState) -> Vec<u8> {
    let is_clone = h.snap_id == 1 && h.parent_vdi_id != 0;
    let marker = if h.is_snapshot() {
        b's'
    } else if is_clone {
        b'c'
    } else {
        b' '
    };
    let mut v = vec![marker, b' '];
    v.extend(pad_right(h.name_bytes(), 8));
    v.extend(format!("  {snapid:5}  {vid:6x}  ").bytes());
    v.extend(pad_right(cstr(&h.tag), 13));
    v.push(b' ');
    if s.lock_state == LOCK_STATE_LOCKED {
        v.extend(format!(" {}\n", s.lock_owner.to_node_string()).bytes());
        return v;
    }
    for (state, nid) in &s.participants {
        v.extend(format!(" {}", nid.to_node_string()).bytes());
        match state {
            1 => v.extend_from_slice(b"(modified)"),
            2 => v.extend_from_slice(b"(shared)"),
            3 => v.extend_from_slice(b"(invalidated)"),
            n => v.extend(format!("(UNKNOWN {n}, BUG!)").bytes()),
        }
    }
    v.push(b'\n');
    v
}

/// `vdi lock list`.
pub async fn list(ctx: &mut Ctx) -> Res<()> {
    let states = get_vdi_state(ctx).await?;
    out!("  Name         Id  VDI id  Tag            Owner node(s)\n");
    parse_vdi(ctx, false, |vid, i, snapid| {
        let Ok(k) = states.binary_search_by_key(&vid, |s| s.vid) else {
            return;
        };
        if states[k].lock_state != LOCK_STATE_UNLOCKED {
            out_bytes(&lock_row(vid, &i.header, snapid, &states[k]));
        }
    })
    .await
}

/// `vdi lock unlock <name> [-s snapshot]`: releases the lock whatever
/// node holds it.
pub async fn unlock(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let (snapid, tag) = (
        ctx.opts.vdi.snapshot_id as u32,
        ctx.opts.vdi.snapshot_tag.clone(),
    );
    let target = ctx.target();
    let found = lookup_vdi(&mut ctx.net.at(target), &name, Some(&tag), snapid).await;
    let vid = *found.as_ref().unwrap_or(&0);
    let mut desc = Msg::new().b(&name);
    desc = match (vid, snapid, tag.is_empty()) {
        (0, 0, true) => desc,
        (0, 0, false) => desc.s(" (tag=").b(&tag).s(")"),
        (0, s, _) => desc.s(&format!(" (snapid={s})")),
        (v, 0, true) => desc.s(&format!(" (vid={v:x})")),
        (v, 0, false) => desc.s(" (tag=").b(&tag).s(&format!(", vid={v:x})")),
        (v, s, _) => desc.s(&format!(" (snapid={s}, vid={v:x})")),
    };
    let desc = desc.0;
    if let Err(e) = found {
        Msg::new()
            .s("Failed to find VDI ")
            .b(&desc)
            .s(&format!(": {}", e.res()))
            .err();
        return ret(1);
    }
    let states = get_vdi_state(ctx).await?;
    let Some(s) = states.iter().find(|s| s.vid == vid) else {
        Msg::new().s("Failed to find VDI state ").b(&desc).err();
        return ret(2);
    };
    let lock_type = match s.lock_state {
        LOCK_STATE_UNLOCKED => {
            Msg::new().s("VDI ").b(&desc).s(" is not locked").err();
            return ret(1);
        }
        LOCK_STATE_LOCKED => LOCK_TYPE_NORMAL,
        LOCK_STATE_SHARED => LOCK_TYPE_SHARED,
        n => {
            Msg::new()
                .s("VDI ")
                .b(&desc)
                .s(&format!(" unknown lock state ({n})"))
                .err();
            return ret(2);
        }
    };
    let mut req = SdReq::new(op::RELEASE_VDI);
    req.set_vdi(VdiArgs {
        base_vdi_id: vid,
        lock_type,
        ..Default::default()
    });
    match ctx.net.exec(target, &req, &[]).await {
        Ok(_) => Ok(()),
        Err(_) => ret(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_golden_097() {
        let mut h = InodeHeader {
            vdi_id: 0x7c2b25,
            snap_id: 1,
            ..Default::default()
        };
        h.name[..4].copy_from_slice(b"test");
        let nid = |p| NodeId::new("127.0.0.1".parse().unwrap(), p);
        let s = VdiState {
            vid: 0x7c2b25,
            lock_state: LOCK_STATE_SHARED,
            participants: vec![(2, nid(7000)), (2, nid(7001))],
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(lock_row(0x7c2b25, &h, 0, &s)).unwrap(),
            "  test          0  7c2b25                 IPv4 ip:127.0.0.1 port:7000(shared) IPv4 ip:127.0.0.1 port:7001(shared)\n"
        );
        let s = VdiState {
            lock_state: LOCK_STATE_LOCKED,
            lock_owner: nid(7002),
            ..s
        };
        assert_eq!(
            String::from_utf8(lock_row(0x7c2b25, &h, 0, &s)).unwrap(),
            "  test          0  7c2b25                 IPv4 ip:127.0.0.1 port:7002\n"
        );
    }
}
