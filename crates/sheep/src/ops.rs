//! Local operations (answered by this node alone) and cluster operations
//! (work phase here under the cluster-wide block, main phase broadcast to
//! every node in total order).

use crate::daemon::Sheep;
use crate::server::{reply, reply_data, Reply};
use crate::state::{OpMessage, Status};
use sd_proto::*;
use sd_store::ObjKey;
use std::sync::Arc;

/// Executes a local operation.
pub async fn local(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    match req.opcode {
        op::READ_VDIS | op::READ_DEL_VDIS => {
            if req.data_length as usize != SD_VDI_BITMAP_SIZE {
                return reply(&req, SdRes::INVALID_PARMS);
            }
            // A node that joined a moment ago lists every VDI only once
            // it has merged its peers' tables (`dog vdi list` right after
            // a whole-cluster restart).
            sheep.wait_vdis_synced().await;
            let v = sheep.view();
            let bm = if req.opcode == op::READ_VDIS {
                &v.vdis.inuse
            } else {
                &v.vdis.deleted
            };
            reply_data(&req, bm.to_bytes())
        }
        op::GET_CLUSTER_DEFAULT => {
            let v = sheep.view();
            let mut r = reply(&req, SdRes::SUCCESS);
            r.0.set_cluster_default(
                v.config.copies,
                v.config.copy_policy,
                v.config.block_size_shift,
            );
            r
        }
        op::FLUSH_VDI => reply(&req, SdRes::INVALID_PARMS),
        op::DISCARD_OBJ => crate::gateway::discard(sheep, req).await,
        op::FLUSH_DEL_CACHE => reply(&req, SdRes::SUCCESS),
        op::GET_NODE_LIST => {
            let nodes = sheep.view().nodes.clone();
            let mut r = reply_data(&req, encode_nodes(&nodes));
            r.0.set_node(nodes.len() as u32, 0, 0);
            r
        }
        op::STAT_SHEEP => {
            let mut r = reply(&req, SdRes::SUCCESS);
            if !sheep.opts.gateway {
                let s = sheep.clone();
                let used = sheep
                    .on_store(move || s.store.used_bytes())
                    .await
                    .unwrap_or(0);
                let size = sheep.this.space;
                r.0.set_node(0, size, size.saturating_sub(used));
            }
            r
        }
        op::STAT_CLUSTER => stat_cluster(sheep, &req).await,
        // "tree" is accepted and kept in the plain layout.
        op::GET_STORE_LIST => reply_data(&req, b"tree plain ".to_vec()),
        op::KILL_NODE => {
            sheep.request_exit(0);
            reply(&req, SdRes::SUCCESS)
        }
        op::GET_VDI_COPIES => {
            let st = sheep.view();
            let n = st.vdis.states.len();
            if (req.data_length as usize) < n * VDI_STATE_SIZE {
                return reply(&req, SdRes::BUFFER_SMALL);
            }
            let mut b = vec![0u8; n * VDI_STATE_SIZE];
            for (i, s) in st.vdis.states.values().enumerate() {
                s.encode_into(&mut b[i * VDI_STATE_SIZE..]);
            }
            reply_data(&req, b)
        }
        op::CLUSTER_INFO => {
            // A node that stopped serving (lost its cluster driver) says so
            // rather than reporting the last state it knew: the view's
            // status is Shutdown then.
            reply_data(&req, sheep.view().cluster_info().encode())
        }
        op::GET_RECOVERY => reply_data(&req, sheep.throttle.lock().unwrap().encode().to_vec()),
        op::SET_RECOVERY => match RecoveryThrottling::decode(&payload) {
            Some(t) => {
                *sheep.throttle.lock().unwrap() = t;
                reply(&req, SdRes::SUCCESS)
            }
            None => reply(&req, SdRes::INVALID_PARMS),
        },
        op::GET_EPOCH => {
            let e = req.obj().tgt_epoch;
            match sheep.store.read_epoch(e) {
                Ok(Some((nodes, time))) => {
                    if (req.data_length as usize) < nodes.len() * SD_NODE_SIZE + 8 {
                        return reply(&req, SdRes::BUFFER_SMALL);
                    }
                    let mut b = encode_nodes(&nodes);
                    b.extend_from_slice(&time.to_le_bytes());
                    reply_data(&req, b)
                }
                _ => reply(&req, SdRes::NO_TAG),
            }
        }
        op::EXIST => {
            let k = ObjKey::replica(req.obj().oid);
            reply(
                &req,
                if sheep.store.exists(&k) {
                    SdRes::SUCCESS
                } else {
                    SdRes::NO_OBJ
                },
            )
        }
        op::OIDS_EXIST => {
            let missing: Vec<u8> = payload
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .filter(|&oid| !sheep.local_key(oid).is_some_and(|k| sheep.store.exists(&k)))
                .flat_map(|oid| oid.to_le_bytes())
                .collect();
            if missing.is_empty() {
                reply(&req, SdRes::SUCCESS)
            } else {
                let mut r = reply_data(&req, missing);
                r.0.result = SdRes::NO_OBJ;
                r
            }
        }
        op::WORKER_STATUS => {
            let records: Vec<u8> = sheep
                .workers
                .reports()
                .iter()
                .flat_map(|r| {
                    WorkerRecord {
                        name: r.name.to_string(),
                        state: r.state.code(),
                        done: r.progress.done,
                        total: r.progress.total,
                        errors: r.progress.errors,
                    }
                    .encode()
                })
                .collect();
            if (req.data_length as usize) < records.len() {
                return reply(&req, SdRes::BUFFER_SMALL);
            }
            reply_data(&req, records)
        }
        op::SCRUB => {
            match req.args[0] {
                scrub_cmd::STATUS => {}
                scrub_cmd::START if !sheep.opts.gateway => sheep.scrub.start(),
                scrub_cmd::STOP => sheep.scrub.stop(),
                scrub_cmd::START => {}
                _ => return reply(&req, SdRes::INVALID_PARMS),
            }
            let st = sheep.scrub.status(sheep).encode().to_vec();
            if (req.data_length as usize) < st.len() {
                return reply(&req, SdRes::BUFFER_SMALL);
            }
            reply_data(&req, st)
        }
        op::GET_LOGLEVEL => reply_data(&req, 6i32.to_le_bytes().to_vec()),
        op::STAT => reply_data(&req, sheep.stats.encode()),
        op::MD_INFO => {
            // `struct sd_md_info`: 64 × {idx i32, free u64 @8, used u64 @16,
            // path[4096] @24}, then nr.
            const ENTRY: usize = 4120;
            let mut b = vec![0u8; 64 * ENTRY + 8];
            if !sheep.opts.gateway {
                let s = sheep.clone();
                let disks = sheep
                    .on_store(move || s.store.disks())
                    .await
                    .unwrap_or_default();
                for (i, d) in disks.iter().take(64).enumerate() {
                    let e = &mut b[i * ENTRY..(i + 1) * ENTRY];
                    le::put_u32(e, 0, i as u32);
                    le::put_u64(e, 8, d.free);
                    le::put_u64(e, 16, d.used);
                    let path = d.path.as_os_str().as_encoded_bytes();
                    let n = path.len().min(4095);
                    e[24..24 + n].copy_from_slice(&path[..n]);
                }
                le::put_u32(&mut b, 64 * ENTRY, disks.len().min(64) as u32);
            }
            reply_data(&req, b)
        }
        op::MD_PLUG | op::MD_UNPLUG => plug_unplug(sheep, &req, payload).await,
        op::REPAIR_REPLICA => repair_replica(sheep, &req).await,
        op::STAT_RECOVERY => {
            // Answer for the newest state of the cluster: an epoch already
            // ordered (a node just left) but not applied here yet must not
            // read as "nothing to recover".
            sheep.catch_up().await;
            let v = sheep.view();
            let epoch = if v.status == Status::Ok { v.epoch } else { 0 };
            reply_data(&req, sheep.recovery.state(epoch).encode().to_vec())
        }
        op::GET_OBJ_LIST => {
            // Listed only once this node has reached the asker's epoch:
            // from then on no write of an older epoch can land here, so
            // the list holds every object the asker may have to recover.
            if !sheep.reach_epoch(req.epoch).await {
                return reply(&req, SdRes::NEW_NODE_VER);
            }
            let s = sheep.clone();
            let oids = sheep
                .on_store(move || -> Vec<u64> {
                    let mut v: Vec<u64> = s
                        .store
                        .list()
                        .unwrap_or_default()
                        .iter()
                        .map(|k| k.oid)
                        .collect();
                    v.extend(
                        s.store
                            .list_stale()
                            .unwrap_or_default()
                            .iter()
                            .map(|(k, _)| k.oid),
                    );
                    v.sort_unstable();
                    v.dedup();
                    v
                })
                .await
                .unwrap_or_default();
            if (req.data_length as usize) < oids.len() * 8 {
                return reply(&req, SdRes::BUFFER_SMALL);
            }
            reply_data(&req, oids.iter().flat_map(|o| o.to_le_bytes()).collect())
        }
        op::GET_DIGEST => {
            let k = ObjKey::replica(req.obj().oid);
            let s = sheep.clone();
            match sheep.on_store(move || s.store.digest(&k)).await {
                Ok(Ok(d)) => {
                    let mut r = reply(&req, SdRes::SUCCESS);
                    r.0.set_obj_digest(d);
                    r
                }
                Ok(Err(e)) => reply(&req, e.res()),
                Err(_) => reply(&req, SdRes::EIO),
            }
        }
        op::GET_HASH => {
            let o = req.obj();
            let k = ObjKey::replica(o.oid);
            let s = sheep.clone();
            let r = sheep
                .on_store(move || {
                    s.store
                        .sha1(&k, None)
                        .or_else(|_| s.store.sha1(&k, Some(o.tgt_epoch)))
                })
                .await;
            match r {
                Ok(Ok(d)) => {
                    let mut r = reply(&req, SdRes::SUCCESS);
                    r.0.set_hash_digest(&d);
                    r
                }
                Ok(Err(e)) => reply(&req, e.res()),
                Err(_) => reply(&req, SdRes::EIO),
            }
        }
        _ => reply(&req, SdRes::INVALID_PARMS),
    }
}

/// REPAIR_REPLICA: pull `forw.oid` from the node at `forw.addr:port` and
/// store it here (dog vdi check repairing a missing or damaged copy).
/// MD_PLUG / MD_UNPLUG: the comma-separated directories in `payload`.
/// Nothing changed (unknown or duplicate paths, a directory without
/// attribute support) is an error, as the original's. Unplugging the
/// last disk takes the node out of the cluster; otherwise the objects
/// the node lost are recovered from the others, and after a plug the
/// objects that now belong on the new disks move there.
async fn plug_unplug(sheep: &Arc<Sheep>, req: &SdReq, payload: Vec<u8>) -> Reply {
    if sheep.opts.gateway || sheep.opts.disks.is_empty() {
        tracing::error!("this node has no multi-disk store (start it with DIR,DISK1,...)");
        return reply(req, SdRes::UNKNOWN);
    }
    let paths: Vec<std::path::PathBuf> = String::from_utf8_lossy(le::cstr(&payload))
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('/').into())
        .collect();
    let plug = req.opcode == op::MD_PLUG;
    // Requests wait for the pass that finds what this node lacks now.
    sheep.recover_again();
    let s = sheep.clone();
    let changed = sheep
        .on_store(move || {
            let n = if plug {
                s.store.plug(&paths)
            } else {
                s.store.unplug(&paths)
            }?;
            Ok::<_, sd_store::StoreError>((n, s.store.disks().len()))
        })
        .await;
    let left = match changed {
        Ok(Ok((0, _))) => {
            tracing::error!("no disk changed");
            return reply(req, SdRes::UNKNOWN);
        }
        Ok(Ok((_, left))) => left,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            return reply(req, e.res());
        }
        Err(_) => return reply(req, SdRes::EIO),
    };
    if left == 0 {
        tracing::warn!("no disks plugged, going down");
        sheep.request_exit(crate::daemon::EXIT_DISK_FAILED);
        return reply(req, SdRes::SUCCESS);
    }
    tracing::info!(
        "{} disks changed; {left} in use",
        if plug { "plugged" } else { "unplugged" }
    );
    sheep.recover_again();
    if plug {
        let s = sheep.clone();
        tokio::spawn(async move {
            let st = s.clone();
            let moved = s
                .on_store(move || {
                    let keys = st.store.list()?;
                    let mut moved = 0;
                    for k in keys {
                        moved += usize::from(st.store.relocate(&k)?);
                    }
                    Ok::<_, sd_store::StoreError>(moved)
                })
                .await;
            match moved {
                Ok(Ok(n)) => tracing::info!("moved {n} objects to the disks they now belong on"),
                Ok(Err(e)) => {
                    tracing::error!("moving objects to new disks: {e}");
                    s.disk_failed(&e);
                }
                Err(_) => {}
            }
        });
    }
    reply(req, SdRes::SUCCESS)
}

async fn repair_replica(sheep: &Arc<Sheep>, req: &SdReq) -> Reply {
    let a = &req.args;
    let oid = le::u64_at(a, 0);
    let from =
        std::net::SocketAddr::new(bytes_to_ip(a[8..24].try_into().unwrap()), le::u16_at(a, 24));
    let key = sd_store::ObjKey::replica(oid);
    let mut r = SdReq::new(op::READ_PEER);
    r.flags = flag::CMD_RECOVERY;
    r.epoch = sheep.epoch();
    r.data_length = sheep.file_size(&key, 0) as u32;
    r.set_obj(ObjArgs {
        oid,
        tgt_epoch: sheep.epoch(),
        ..Default::default()
    });
    let (rsp, data) = sheep.send_peer(from, &r, &[]).await;
    if rsp.result != SdRes::SUCCESS {
        return reply(req, rsp.result);
    }
    let s = sheep.clone();
    match sheep
        .on_store(move || s.store.create_and_write(&key, data.len() as u64, 0, &data))
        .await
    {
        Ok(Ok(())) => reply(req, SdRes::SUCCESS),
        Ok(Err(e)) => reply(req, e.res()),
        Err(_) => reply(req, SdRes::EIO),
    }
}

/// STAT_CLUSTER: the epoch history, newest first, as many records as fit.
async fn stat_cluster(sheep: &Arc<Sheep>, req: &SdReq) -> Reply {
    let room = req.cluster().nodes_nr as usize;
    let rec = EPOCH_LOG_HEADER_SIZE + room * SD_NODE_SIZE;
    let (status, epoch, cfg, disable_recovery) = {
        let v = sheep.view();
        (v.status, v.epoch, v.config.clone(), v.disable_recovery)
    };
    let mut out = Vec::new();
    let mut e = epoch;
    while e > 0 && out.len() + rec <= req.data_length as usize {
        let mut log = EpochLog {
            epoch: e,
            ..Default::default()
        };
        if out.is_empty() {
            log.ctime = cfg.ctime;
            log.disable_recovery = disable_recovery;
            log.nr_copies = cfg.copies;
            log.copy_policy = cfg.copy_policy;
            log.flags = cfg.flags;
            log.drv_name = cfg.default_store;
        }
        if room > 0 {
            let Some((nodes, time)) = crate::vdi::epoch_nodes(sheep, e).await else {
                break;
            };
            if nodes.len() > room {
                return reply(req, SdRes::BUFFER_SMALL);
            }
            log.nodes = nodes;
            log.time = time;
        }
        out.extend_from_slice(&log.encode(room));
        e -= 1;
    }
    let mut r = reply_data(req, out);
    r.0.result = match status {
        Status::Ok => SdRes::SUCCESS,
        s => s.refusal().unwrap(),
    };
    r
}

/// Executes a cluster operation.
pub async fn cluster(sheep: &Arc<Sheep>, req: SdReq, payload: Vec<u8>) -> Reply {
    let has_work = matches!(
        req.opcode,
        op::NEW_VDI
            | op::GET_VDI_INFO
            | op::LOCK_VDI
            | op::RELEASE_VDI
            | op::DEL_VDI
            | op::FORCE_RECOVER
            | op::GET_VDI_ATTR
    );
    if !has_work {
        if req.opcode == op::MAKE_FS {
            let store = le::cstr(&payload);
            if !store.is_empty() && store != b"plain" && store != b"tree" {
                return reply(&req, SdRes::NO_STORE);
            }
        }
        let rsp = SdRsp::for_req(&req, SdRes::SUCCESS);
        return match sheep
            .broadcast(OpMessage {
                req,
                rsp,
                data: payload,
            })
            .await
        {
            Ok(()) => reply(&req, SdRes::SUCCESS),
            Err(e) => {
                tracing::error!("broadcast failed: {e:#}");
                reply(&req, SdRes::CLUSTER_ERROR)
            }
        };
    }
    let Ok(_guard) = sheep.driver.block().await else {
        return reply(&req, SdRes::CLUSTER_ERROR);
    };
    match sheep.driver.stream_end().await {
        Ok(end) => sheep.wait_applied(end).await,
        Err(_) => return reply(&req, SdRes::CLUSTER_ERROR),
    }
    let crate::vdi::WorkDone {
        mut rsp,
        data,
        broadcast,
    } = crate::vdi::work(sheep, &req, &payload).await;
    if let Some(bdata) = broadcast.filter(|_| rsp.result == SdRes::SUCCESS) {
        if let Err(e) = sheep
            .broadcast(OpMessage {
                req,
                rsp,
                data: bdata,
            })
            .await
        {
            tracing::error!("broadcast failed: {e:#}");
            return reply(&req, SdRes::CLUSTER_ERROR);
        }
    }
    if req.opcode == op::NEW_VDI {
        crate::state::NewVdiOutcome::client_rsp(&mut rsp);
    }
    rsp.data_length = data.len() as u32;
    (rsp, data)
}
