//! Erasure-coded object I/O at the gateway (PROTOCOL.md §8).
//!
//! Target *j* of an object's placement stores strip *j* of every 512-byte
//! stripe, in a file of `object_size / d` bytes. Writes encode whole
//! stripes (read-modify-write for unaligned ranges) and send each target
//! its strip range; reads fetch the data strips and, unlike the original,
//! decode on the fly from any `d` strips when some are unreachable, so a VDI
//! with up to `p` nodes down keeps serving immediately.

use crate::daemon::Sheep;
use crate::server::{reply, reply_data, Reply};
use futures::future::join_all;
use sd_ec::Codec;
use sd_proto::*;
use std::sync::Arc;

/// Sends one strip request to target `j`.
async fn strip_req(
    sheep: &Arc<Sheep>,
    node: &SdNode,
    mut req: SdReq,
    j: usize,
    offset: u64,
    payload: &[u8],
) -> Reply {
    let mut o = req.obj();
    o.ec_index = j as u8;
    o.offset = offset as u32;
    req.set_obj(o);
    req.data_length = if req.has_payload() {
        payload.len() as u32
    } else {
        req.data_length
    };
    crate::gateway::send(sheep, node, req, payload).await
}

/// Reads object bytes `[offset, offset+len)` of an EC object. `preq` is the
/// peer request template (READ_PEER, epoch set).
pub async fn read(
    sheep: &Arc<Sheep>,
    codec: &Codec,
    targets: &[SdNode],
    preq: SdReq,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, SdRes> {
    let pol = codec.policy();
    let d = pol.data_strips();
    if targets.len() < d {
        return Err(SdRes::SYSTEM_ERROR);
    }
    let r = pol
        .stripe_range(offset, len)
        .map_err(|_| SdRes::INVALID_PARMS)?;
    let mut req = preq;
    req.flags &= !flag::CMD_WRITE;
    req.data_length = r.strip_len() as u32;
    // Data strips first; parity only if some data strip is missing.
    let first =
        join_all((0..d).map(|j| strip_req(sheep, &targets[j], req, j, r.strip_offset(), &[])))
            .await;
    let mut strips: Vec<Option<Vec<u8>>> = vec![None; targets.len().min(pol.nr_copies())];
    let mut worst = SdRes::SUCCESS;
    for (j, (rsp, data)) in first.into_iter().enumerate() {
        if rsp.result == SdRes::SUCCESS && data.len() as u64 == r.strip_len() {
            strips[j] = Some(data);
        } else {
            worst = rsp.result;
        }
    }
    if strips.iter().take(d).any(Option::is_none) {
        let extra = join_all(
            (d..strips.len()).map(|j| strip_req(sheep, &targets[j], req, j, r.strip_offset(), &[])),
        )
        .await;
        for (k, (rsp, data)) in extra.into_iter().enumerate() {
            if rsp.result == SdRes::SUCCESS && data.len() as u64 == r.strip_len() {
                strips[d + k] = Some(data);
            }
        }
        if strips.iter().filter(|s| s.is_some()).count() < d {
            return Err(if worst == SdRes::SUCCESS {
                SdRes::EIO
            } else {
                worst
            });
        }
        let mut all: Vec<Option<Vec<u8>>> = strips.clone();
        all.resize(pol.nr_copies(), None);
        codec.reconstruct(&mut all).map_err(|_| SdRes::EIO)?;
        strips = all;
    }
    let data: Vec<&Vec<u8>> = strips.iter().take(d).map(|s| s.as_ref().unwrap()).collect();
    let joined = codec.join(&data).map_err(|_| SdRes::EIO)?;
    let skip = (offset - r.object_offset()) as usize;
    Ok(joined[skip..skip + len as usize].to_vec())
}

/// Writes (WRITE_PEER) or creates (CREATE_AND_WRITE_PEER) an EC object.
/// `payload` lands at object offset `offset`; a create zero-fills the rest
/// of the object, a write reads the partial head and tail stripes first.
pub async fn write(
    sheep: &Arc<Sheep>,
    codec: &Codec,
    targets: &[SdNode],
    preq: SdReq,
    offset: u64,
    payload: &[u8],
    object_size: u64,
) -> Reply {
    let pol = codec.policy();
    let d = pol.data_strips();
    if targets.len() < d {
        return reply(&preq, SdRes::SYSTEM_ERROR);
    }
    let creating = preq.opcode == op::CREATE_AND_WRITE_PEER;
    let (start, len) = if creating {
        (0, object_size)
    } else {
        (offset, payload.len() as u64)
    };
    let r = match pol.stripe_range(start, len) {
        Ok(r) => r,
        Err(_) => return reply(&preq, SdRes::INVALID_PARMS),
    };
    let mut buf =
        if creating || (offset == r.object_offset() && payload.len() as u64 == r.object_len()) {
            vec![0u8; r.object_len() as usize]
        } else {
            let mut rr = preq;
            rr.opcode = op::READ_PEER;
            rr.flags &= !flag::CMD_WRITE;
            match read(sheep, codec, targets, rr, r.object_offset(), r.object_len()).await {
                Ok(b) => b,
                Err(e) => return reply(&preq, e),
            }
        };
    let at = (offset - r.object_offset()) as usize;
    buf[at..at + payload.len()].copy_from_slice(payload);
    let mut strips = vec![Vec::new(); pol.nr_copies()];
    if codec.encode(&buf, &mut strips).is_err() {
        return reply(&preq, SdRes::EIO);
    }
    let mut req = preq;
    req.flags |= flag::CMD_WRITE;
    let sends = targets
        .iter()
        .enumerate()
        .map(|(j, n)| strip_req(sheep, n, req, j, r.strip_offset(), &strips[j]));
    for (rsp, _) in join_all(sends).await {
        if rsp.result != SdRes::SUCCESS {
            return reply(&preq, rsp.result);
        }
    }
    reply(&preq, SdRes::SUCCESS)
}

/// Wraps a successful EC read as the reply to `req`.
pub fn read_reply(req: &SdReq, r: Result<Vec<u8>, SdRes>) -> Reply {
    match r {
        Ok(d) => reply_data(req, d),
        Err(e) => reply(req, e),
    }
}
