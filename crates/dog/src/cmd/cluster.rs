//! `dog cluster info|format|shutdown|recover` (CLI.md §2.1.1–2.1.4).

use super::{light, ret};
use crate::app::{confirm, Ctx};
use crate::text::{cstr, ctime, local_time};
use crate::{err, out, End, Res};
use sd_client::vdi::{exec_ok, get_cluster_info, stat_cluster};
use sd_proto::*;

/// `cluster info`: status, optional store details, epoch history.
pub async fn info(ctx: &mut Ctx) -> Res<()> {
    let raw = ctx.opts.raw;
    let target = ctx.target();
    let stat = match stat_cluster(&mut ctx.net.at(target), ctx.nodes.len() as u32, ctx.epoch).await
    {
        Ok(s) => s,
        Err(_) => return ret(2),
    };
    let ok = stat.result.is_success();
    let first = stat.logs.first().cloned().unwrap_or_default();
    if !raw {
        out!("Cluster status: ");
    }
    if ok {
        let state = if first.disable_recovery {
            "disabled"
        } else {
            "enabled"
        };
        out!("running, auto-recovery {state}\n");
    } else {
        out!("{}\n", stat.result);
    }
    if ctx.opts.verbose {
        if !raw {
            out!("Cluster store: ");
        }
        if ok {
            out!(
                "{} with {} redundancy policy\n",
                String::from_utf8_lossy(cstr(&first.drv_name)),
                policy::redundancy_string(first.nr_copies, first.copy_policy)
            );
            if !raw {
                out!("Cluster vnodes strategy: ");
            }
            let auto = first.flags & cluster_flag::AUTO_VNODES != 0;
            out!("{}\n", if auto { "auto" } else { "fixed" });
        } else {
            out!("{}\n", stat.result);
        }
        if !raw {
            out!("Cluster vnode mode: ");
        }
        let disk = first.flags & cluster_flag::DISKMODE != 0;
        out!("{}\n", if disk { "disk" } else { "node" });
    } else {
        out!("\n");
    }
    if !raw && stat.data_length > 0 && !stat.logs.is_empty() {
        out!("Cluster created at {}\n", ctime((first.ctime >> 32) as i64));
        out!("Epoch Time           Version [Host:Port:V-Nodes,,,]\n");
    }
    for (i, log) in stat.logs.iter().enumerate() {
        if raw {
            out!("{} {}", log.time, log.epoch as i32);
        } else {
            out!(
                "{} {:6}",
                local_time(log.time as i64, "%Y-%m-%d %H:%M:%S"),
                log.epoch as i32
            );
        }
        out!(" [");
        if ctx.opts.cluster.diff {
            match stat.logs.get(i + 1) {
                None => out!("formated"),
                Some(older) => {
                    out!("{}", nodes_diff(&log.nodes, &older.nodes, '+'));
                    out!("{}", nodes_diff(&older.nodes, &log.nodes, '-'));
                }
            }
        } else {
            let members: Vec<String> = log
                .nodes
                .iter()
                .map(|n| format!("{}:{}", n.nid.to_addr_string(), n.nr_vnodes))
                .collect();
            out!("{}", members.join(", "));
        }
        out!("]\n");
    }
    Ok(())
}

/// `<act><ip>:<port>` for every node of `a` not in `b`, joined by `, `.
fn nodes_diff(a: &[SdNode], b: &[SdNode], act: char) -> String {
    a.iter()
        .filter(|n| !b.iter().any(|m| m.nid == n.nid))
        .map(|n| format!("{act}{}", n.nid.to_addr_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

const FORMAT_PROMPT: &str = "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! The cluster is not empty.\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";

const RECOVER_PROMPT: &str = "Caution! Please try starting all the cluster nodes normally before\nrunning this command.\n\nThe cluster may need to be force recovered if:\n  - the master node fails to start because of epoch mismatch; or\n  - some nodes fail to start after a cluster shutdown.\n\nAre you sure you want to continue? [yes/no]: ";

/// `cluster format`.
pub async fn format(ctx: &mut Ctx) -> Res<()> {
    let fixed = ctx.opts.cluster.fixed_vnodes;
    for n in ctx.nodes.clone() {
        let (res, ci) = match get_cluster_info(&mut ctx.net.at(n.nid.socket_addr())).await {
            Ok(v) => v,
            Err(_) => {
                err!("Fail to execute request");
                return ret(1);
            }
        };
        if !res.is_success() {
            err!("{res}");
            return ret(1);
        }
        if n.nr_vnodes != 0 {
            let auto = ci.flags & cluster_flag::AUTO_VNODES != 0;
            if auto && fixed {
                err!("Can not apply the option of '-V', because there are vnode strategy of sheep is auto in the cluster");
                return ret(1);
            }
            if !auto && !fixed {
                err!("Need to specify the option of '-V', because there are vnode strategy of sheep is fixed in the cluster");
                return ret(1);
            }
        }
    }
    let copies = ctx.opts.cluster.copies;
    if copies as usize > ctx.nr_zones {
        confirm(&format!(
            "Number of copies ({copies}) is larger than number of zones ({}).\nAre you sure you want to continue? [yes/no]: ",
            ctx.nr_zones
        ))?;
    }
    let target = ctx.target();
    let mut req = SdReq::new(op::READ_VDIS);
    req.data_length = SD_VDI_BITMAP_SIZE as u32;
    let Ok((rsp, bitmap)) = ctx.net.exec(target, &req, &[]).await else {
        return ret(2);
    };
    if !rsp.result.is_success() {
        err!("{}", rsp.result);
        return ret(1);
    }
    if bitmap.iter().any(|&b| b != 0) && !ctx.opts.cluster.force {
        confirm(FORMAT_PROMPT)?;
    }

    let o = &ctx.opts.cluster;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut flags = 0;
    for (on, f) in [
        (o.strict, cluster_flag::STRICT),
        (o.use_lock, cluster_flag::USE_LOCK),
        (o.recycle_vid, cluster_flag::RECYCLE_VID),
        (!o.fixed_vnodes, cluster_flag::AUTO_VNODES),
        (o.avoid_diskfull, cluster_flag::AVOID_DISKFULL),
    ] {
        if on {
            flags |= f;
        }
    }
    let store: &[u8] = if o.store.is_empty() {
        b"plain"
    } else {
        &o.store
    };
    let mut payload = store.to_vec();
    payload.push(0);
    let mut req = SdReq::new(op::MAKE_FS);
    req.flags = flag::CMD_WRITE;
    req.data_length = payload.len() as u32;
    req.set_cluster(ClusterArgs {
        copies: o.copies,
        copy_policy: o.copy_policy,
        block_size_shift: o.block_size_shift,
        ctime: (now.as_secs() << 32) | (now.subsec_micros() as u64 * 1000),
        flags,
        ..Default::default()
    });
    crate::out::Msg::new()
        .s("using backend ")
        .b(store)
        .s(" store\n")
        .out();
    let Ok((rsp, _)) = ctx.net.exec(target, &req, &payload).await else {
        return ret(2);
    };
    if !rsp.result.is_success() {
        err!("Format failed: {}", rsp.result);
        if rsp.result == SdRes::NO_STORE {
            return list_store(ctx).await;
        }
        return ret(2);
    }
    Ok(())
}

/// Prints the stores the daemon offers (after a NO_STORE format failure).
async fn list_store(ctx: &mut Ctx) -> Res<()> {
    let mut req = SdReq::new(op::GET_STORE_LIST);
    req.data_length = 512;
    let target = ctx.target();
    let Ok((rsp, buf)) = ctx.net.exec(target, &req, &[]).await else {
        return ret(2);
    };
    if !rsp.result.is_success() {
        err!("Restore failed: {}", rsp.result);
        return ret(1);
    }
    out!("Available stores:\n---------------------------------------\n");
    crate::out::out_bytes(cstr(&buf));
    out!("\n");
    ret(2)
}

/// `cluster shutdown`.
pub async fn shutdown(ctx: &mut Ctx) -> Res<()> {
    let target = ctx.target();
    if light(ctx, target, &SdReq::new(op::SHUTDOWN)).await.is_err() {
        err!("failed to execute request");
        return ret(1);
    }
    Ok(())
}

/// `cluster reweight`: no output; `Response's result: …` and exit 1 if
/// the cluster refuses.
pub async fn reweight(ctx: &mut Ctx) -> Res<()> {
    let target = ctx.target();
    if light(ctx, target, &SdReq::new(op::REWEIGHT)).await.is_err() {
        return ret(1);
    }
    Ok(())
}

/// `cluster recover force`.
pub async fn recover_force(ctx: &mut Ctx) -> Res<()> {
    if !ctx.opts.cluster.force {
        confirm(RECOVER_PROMPT)?;
    }
    let mut req = SdReq::new(op::FORCE_RECOVER);
    req.data_length = (SD_NODE_SIZE * SD_MAX_NODES) as u32;
    let target = ctx.target();
    match exec_ok(&mut ctx.net.at(target), &req, &[]).await {
        Ok(_) => Ok(()),
        Err(sd_client::ClientError::Res(r)) => {
            err!("failed to execute request, {r}");
            ret(1)
        }
        Err(_) => ret(2),
    }
}

/// `cluster recover enable|disable`.
pub async fn recover_switch(ctx: &mut Ctx, enable: bool) -> Res<()> {
    let opcode = if enable {
        op::ENABLE_RECOVER
    } else {
        op::DISABLE_RECOVER
    };
    let target = ctx.target();
    if light(ctx, target, &SdReq::new(opcode)).await.is_err() {
        return Err(End::Ret(1));
    }
    out!(
        "Cluster recovery: {}\n",
        if enable { "enable" } else { "disable" }
    );
    Ok(())
}

const ALTER_CLUSTER_COPY_PROMPT: &str = "    __\n   ()'`;\n   /\\|`  Caution! Changing cluster's redundancy level will affect\n  /  |   all the VDIs to be created later.\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";

/// `cluster alter-copy -c <n>`: changes the default replica count of
/// VDIs created later.
pub async fn alter_copy(ctx: &mut Ctx) -> Res<()> {
    let o = &ctx.opts.cluster;
    if o.copy_policy != 0 {
        err!("Changing redundancy level of erasure coded vdi is not supported yet.");
        return ret(64);
    }
    let (mut copies, force) = (o.copies, o.force);
    if copies == 0 {
        copies = SD_DEFAULT_COPIES;
        out!("The cluster's redundancy level is not specified, use {copies} as default.\n");
    }
    if !force && copies as usize > ctx.nodes.len() {
        super::vdi::confirm_copies(copies, ctx.nodes.len())?;
    }
    let target = ctx.target();
    let Ok(stat) = stat_cluster(&mut ctx.net.at(target), 0, 1).await else {
        return ret(1);
    };
    if !stat.result.is_success() {
        err!("Response's result: {}", stat.result);
        return ret(1);
    }
    let first = stat.logs.first().cloned().unwrap_or_default();
    if first.copy_policy != 0 {
        err!("The cluster's copy policy is erasure code, changing it is not supported yet.");
        return ret(1);
    }
    if first.nr_copies == copies {
        err!("The cluster's redundancy level is already set to {copies}, nothing changed.");
        return ret(1);
    }
    if !force {
        confirm(ALTER_CLUSTER_COPY_PROMPT)?;
    }
    let mut req = SdReq::new(op::ALTER_CLUSTER_COPY);
    req.set_cluster(ClusterArgs {
        copies,
        ..Default::default()
    });
    if light(ctx, target, &req).await.is_err() {
        err!("Changing the cluster's redundancy level failure.");
        return ret(1);
    }
    err!(
        "The cluster's redundancy level is set to {copies}, the old one was {}.",
        first.nr_copies
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: 128,
            zone: 0,
            space: 0,
        }
    }

    #[test]
    fn diff_groups_have_no_separator_between_them() {
        let new = [node(7100), node(7101), node(7103)];
        let old = [node(7100), node(7101), node(7102)];
        let s = format!(
            "{}{}",
            nodes_diff(&new, &old, '+'),
            nodes_diff(&old, &new, '-')
        );
        assert_eq!(s, "+127.0.0.1:7103-127.0.0.1:7102");
        let s = nodes_diff(&[node(1), node(2)], &[], '+');
        assert_eq!(s, "+127.0.0.1:1, +127.0.0.1:2");
    }
}
