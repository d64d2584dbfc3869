//! `dog node list|info|kill|recovery` (CLI.md §2.2.1–2.2.4).

use super::{light, ret, vdi::parse_vdi};
use crate::app::Ctx;
use crate::cnum::{c_f64_to_i32, c_fixed, is_numeric, strtol, strtol_whole};
use crate::out::{show_progress, Msg};
use crate::text::strnumber;
use crate::{err, out, End, Res};
use sd_proto::*;

/// One `node list` row: `%4d   %-20s\t%2d%11u`, or raw
/// `<id> <addr> <vnodes> <zone>`.
pub fn list_row(id: usize, n: &SdNode, raw: bool) -> String {
    let host = n.nid.to_addr_string();
    if raw {
        format!("{id} {host} {} {}\n", n.nr_vnodes, n.zone)
    } else {
        format!("{id:4}   {host:<20}\t{:2}{:11}\n", n.nr_vnodes, n.zone)
    }
}

/// `node list`.
pub fn list(ctx: &mut Ctx) -> Res<()> {
    if !ctx.opts.raw {
        out!("  Id   Host:Port         V-Nodes       Zone\n");
    }
    for (i, n) in ctx.nodes.iter().enumerate() {
        out!("{}", list_row(i, n, ctx.opts.raw));
    }
    Ok(())
}

/// The original's `(int)(used / size * 100)` in doubles.
pub(super) fn use_pct(size: u64, free: u64) -> i32 {
    c_f64_to_i32(size.wrapping_sub(free) as f64 / size as f64 * 100.0)
}

/// `node info`: per-node space, totals, and the total size of the
/// current (non-snapshot) VDIs.
pub async fn info(ctx: &mut Ctx) -> Res<()> {
    let raw = ctx.opts.raw;
    if !raw {
        out!("Id\tSize\tUsed\tAvail\tUse%\n");
    }
    let (mut total_size, mut total_avail, mut success) = (0u64, 0u64, 0);
    for n in ctx.nodes.clone() {
        let req = SdReq::new(op::STAT_SHEEP);
        let rsp = match ctx.net.exec(n.nid.socket_addr(), &req, &[]).await {
            Ok((rsp, _)) => rsp,
            Err(_) => {
                // The header carries nothing: sizes count as 0.
                continue;
            }
        };
        let (size, free) = (rsp.node_store_size(), rsp.node_store_free());
        if rsp.result.is_success() {
            let pct = if size == 0 { 0 } else { use_pct(size, free) };
            let (s, u, a) = (
                strnumber(size, raw),
                strnumber(size.wrapping_sub(free), raw),
                strnumber(free, raw),
            );
            if raw {
                out!("{success} {s} {u} {a} {pct}%\n");
            } else {
                out!("{success:2}\t{s}\t{u}\t{a}\t{pct:3}%\n");
            }
            success += 1;
        } else {
            err!("Response's result: {}", rsp.result);
        }
        total_size = total_size.wrapping_add(size);
        total_avail = total_avail.wrapping_add(free);
    }
    if success == 0 {
        err!("Cannot get information from any nodes");
        return ret(2);
    }
    let mut vdi_size = 0u64;
    parse_vdi(ctx, false, |_, i, _| {
        if !i.header.is_snapshot() {
            vdi_size = vdi_size.wrapping_add(i.header.vdi_size);
        }
    })
    .await?;
    let (s, u, a, v) = (
        strnumber(total_size, raw),
        strnumber(total_size.wrapping_sub(total_avail), raw),
        strnumber(total_avail, raw),
        strnumber(vdi_size, raw),
    );
    let pct = use_pct(total_size, total_avail);
    if raw {
        out!("Total {s} {u} {a} {pct}% {v}\n");
    } else {
        out!("Total\t{s}\t{u}\t{a}\t{pct:3}%\n\nTotal virtual image size\t{v}\n");
    }
    Ok(())
}

/// `node kill <id>` / `node kill -l`.
pub async fn kill(ctx: &mut Ctx) -> Res<()> {
    let mut to = ctx.opts.node.local.then(|| ctx.target());
    if let Some(p) = ctx.take_operand() {
        if to.is_some() {
            err!("don't use -l option and specify node id at the same time");
            return Err(End::Exit(64));
        }
        if !is_numeric(&p) {
            Msg::new()
                .s("Invalid node id '")
                .b(&p)
                .s("', please specify a numeric value")
                .err();
            return Err(End::Exit(64));
        }
        let id = strtol(&p, 10).0 as i32;
        if id < 0 || id as usize >= ctx.nodes.len() {
            err!("Invalid node id '{id}'");
            return Err(End::Exit(64));
        }
        to = Some(ctx.nodes[id as usize].nid.socket_addr());
    }
    let Some(to) = to else {
        err!("please specify -l option or node id");
        return Err(End::Exit(64));
    };
    if light(ctx, to, &SdReq::new(op::KILL_NODE)).await.is_err() {
        err!("Failed to execute request");
        return Err(End::Exit(1));
    }
    Ok(())
}

/// Recovery worker states of `recovery_state.state`.
const RW_PREPARE_LIST: u32 = 0;
const RW_NOTIFY_COMPLETION: u32 = 2;

async fn recovery_state(ctx: &mut Ctx, to: std::net::SocketAddr) -> Result<RecoveryState, End> {
    let mut req = SdReq::new(op::STAT_RECOVERY);
    req.data_length = RECOVERY_STATE_SIZE as u32;
    match ctx.net.exec(to, &req, &[]).await {
        Err(_) => Err(End::Ret(2)),
        Ok((rsp, data)) if rsp.result.is_success() => {
            let mut b = data;
            b.resize(RECOVERY_STATE_SIZE, 0);
            Ok(RecoveryState::decode(&b).expect("padded"))
        }
        Ok((rsp, _)) => {
            err!("{}", rsp.result);
            Err(End::Ret(1))
        }
    }
}

/// `node recovery [info]`: the nodes currently recovering.
pub async fn recovery_info(ctx: &mut Ctx) -> Res<()> {
    if ctx.opts.node.progress {
        return recovery_progress(ctx).await;
    }
    let raw = ctx.opts.raw;
    if !raw {
        out!("Nodes In Recovery:\n  Id   Host:Port         V-Nodes       Zone       Progress\n");
    }
    for (i, n) in ctx.nodes.clone().iter().enumerate() {
        let st = recovery_state(ctx, n.nid.socket_addr()).await?;
        if !st.in_recovery {
            continue;
        }
        let host = n.nid.to_addr_string();
        if raw {
            out!(
                "{i} {host} {} {} {} {}\n",
                n.nr_vnodes,
                n.zone as i32,
                st.nr_finished,
                st.nr_total
            );
        } else {
            // C: 100 * (float)finished / total, in single precision.
            let pct = 100.0f32 * st.nr_finished as f32 / st.nr_total as f32;
            out!(
                "{i:4}   {host:<20}{:5}{:11}{:>11}%\n",
                n.nr_vnodes,
                n.zone as i32,
                c_fixed(pct as f64, 1)
            );
        }
    }
    Ok(())
}

/// `node recovery set-throttle <max> <interval>` (CLI.md §2.2.4): at most
/// `max` objects per `interval` ms of recovery on the target node; both 0
/// for none.
pub async fn recovery_set_throttle(ctx: &mut Ctx) -> Res<()> {
    let show = |v: &Option<Vec<u8>>| {
        v.as_ref()
            .map_or("(null)".into(), |v| String::from_utf8_lossy(v).into_owned())
    };
    let (a, b) = (ctx.take_operand(), ctx.take_operand());
    let (Some(a), Some(b)) = (&a, &b) else {
        err!(
            "Invalid interval max ({}), interval ({})",
            show(&a),
            show(&b)
        );
        return Err(End::Exit(64));
    };
    let Some(max) = strtol_whole(a).filter(|m| (0..=u32::MAX as i64).contains(m)) else {
        err!("Invalid max ({})", String::from_utf8_lossy(a));
        return Err(End::Exit(64));
    };
    let Some(interval) = strtol_whole(b).filter(|&i| i >= 0) else {
        err!("Invalid interval ({})", String::from_utf8_lossy(b));
        return Err(End::Exit(64));
    };
    if (max == 0) != (interval == 0) {
        err!("Invalid interval max ({max}), interval ({interval})");
        return Err(End::Exit(64));
    }
    let t = RecoveryThrottling {
        max_exec_count: max as u32,
        queue_work_interval: interval as u64,
        throttling: false,
    };
    let mut req = SdReq::new(op::SET_RECOVERY);
    req.flags = flag::CMD_WRITE;
    req.data_length = RECOVERY_THROTTLING_SIZE as u32;
    let target = ctx.target();
    match ctx.net.exec(target, &req, &t.encode()).await {
        Ok((rsp, _)) if rsp.result.is_success() => Ok(()),
        _ => {
            err!("Failed to execute request");
            Err(End::Exit(255))
        }
    }
}

/// `node recovery get-throttle`: the target node's throttle, on stderr as
/// the original prints it (QUIRK).
pub async fn recovery_get_throttle(ctx: &mut Ctx) -> Res<()> {
    let mut req = SdReq::new(op::GET_RECOVERY);
    req.data_length = RECOVERY_THROTTLING_SIZE as u32;
    let target = ctx.target();
    match ctx.net.exec(target, &req, &[]).await {
        Ok((rsp, data)) if rsp.result.is_success() => {
            let mut b = data;
            b.resize(RECOVERY_THROTTLING_SIZE, 0);
            let t = RecoveryThrottling::decode(&b).expect("padded");
            err!(
                "max ({}), interval ({})",
                t.max_exec_count,
                t.queue_work_interval
            );
            Ok(())
        }
        _ => {
            err!("Failed to execute request");
            Err(End::Exit(255))
        }
    }
}

/// `node worker`: the background workers of the target node (recovery,
/// reclaim, VDI sync...), their state and progress. Raw: `name state done
/// total errors` per line.
pub async fn worker(ctx: &mut Ctx) -> Res<()> {
    let mut req = SdReq::new(op::WORKER_STATUS);
    req.data_length = (64 * WORKER_RECORD_SIZE) as u32;
    let target = ctx.target();
    let data = match ctx.net.exec(target, &req, &[]).await {
        Ok((rsp, data)) if rsp.result.is_success() => data,
        Ok((rsp, _)) => {
            err!("Failed to get the workers: {}", rsp.result);
            return Err(End::Exit(1));
        }
        Err(_) => return Err(End::Ret(2)),
    };
    if !ctx.opts.raw {
        out!("  Name              State           Done      Total   Errors\n");
    }
    for r in data
        .chunks_exact(WORKER_RECORD_SIZE)
        .filter_map(WorkerRecord::decode)
    {
        let state = match r.state {
            worker_state::IDLE => "idle",
            worker_state::BUSY => "busy",
            worker_state::THROTTLED => "throttled",
            _ => "unknown",
        };
        if ctx.opts.raw {
            let name = r.name.replace(' ', "_");
            out!("{name} {state} {} {} {}\n", r.done, r.total, r.errors);
        } else {
            out!(
                "  {:<18}{:<12}{:>8}{:>11}{:>9}\n",
                r.name,
                state,
                r.done,
                r.total,
                r.errors
            );
        }
    }
    Ok(())
}

/// `node scrub [status|start|stop]`: the scrub of every node. `start` and
/// `stop` ask every node and print nothing; `status` prints one line per
/// node (raw: `id host:port state done total passes bad repaired
/// unrepaired differing`).
pub async fn scrub(ctx: &mut Ctx, cmd: u8) -> Res<()> {
    let raw = ctx.opts.raw;
    if cmd == scrub_cmd::STATUS && !raw {
        out!("  Id   Host:Port         State       Checked      Total  Passes  Bad blocks  Repaired  Unrepaired  Differing\n");
    }
    for (i, n) in ctx.nodes.clone().iter().enumerate() {
        let mut req = SdReq::new(op::SCRUB);
        req.args[0] = cmd;
        req.data_length = SCRUB_STATUS_SIZE as u32;
        let host = n.nid.to_addr_string();
        let st = match ctx.net.exec(n.nid.socket_addr(), &req, &[]).await {
            Ok((rsp, data)) if rsp.result.is_success() => ScrubStatus::decode(&data),
            Ok((rsp, _)) => {
                err!("Failed to reach the scrub of {host}: {}", rsp.result);
                return Err(End::Exit(1));
            }
            Err(_) => return Err(End::Ret(2)),
        };
        let Some(st) = st else {
            err!("Failed to reach the scrub of {host}: short reply");
            return Err(End::Exit(1));
        };
        if cmd != scrub_cmd::STATUS {
            continue;
        }
        let state = if st.running { "running" } else { "idle" };
        let n = [
            st.done,
            st.total,
            st.passes,
            st.bad_blocks,
            st.repaired,
            st.unrepaired,
            st.differing,
        ];
        if raw {
            let n: Vec<String> = n.iter().map(u64::to_string).collect();
            out!("{i} {host} {state} {}\n", n.join(" "));
        } else {
            out!(
                "{i:4}   {host:<18}{state:<8}{:>10}{:>11}{:>8}{:>12}{:>10}{:>12}{:>11}\n",
                n[0],
                n[1],
                n[2],
                n[3],
                n[4],
                n[5],
                n[6]
            );
        }
    }
    Ok(())
}

/// The target's recovery state for `-P`: any failure ends with 2.
async fn progress_state(ctx: &mut Ctx, to: std::net::SocketAddr) -> Res<RecoveryState> {
    recovery_state(ctx, to).await.map_err(|e| {
        if e == End::Ret(2) {
            err!("Failed to execute request");
        }
        End::Ret(2)
    })
}

/// `node recovery -P`: follows the target node's recovery until it ends.
async fn recovery_progress(ctx: &mut Ctx) -> Res<()> {
    let target = ctx.target();
    let mut st = progress_state(ctx, target).await?;
    if !st.in_recovery {
        return Ok(());
    }
    loop {
        let prev_total = st.nr_total;
        st = progress_state(ctx, target).await?;
        if !st.in_recovery {
            show_progress(prev_total, prev_total, true);
            return Ok(());
        }
        match st.state {
            RW_PREPARE_LIST => out!("\rpreparing a checked object list..."),
            RW_NOTIFY_COMPLETION => out!("\rnotifying a completion of recovery..."),
            _ => show_progress(st.nr_finished, st.nr_total, true),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(port: u16, vnodes: u16, zone: u32) -> SdNode {
        SdNode {
            nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
            nr_vnodes: vnodes,
            zone,
            space: 0,
        }
    }

    #[test]
    fn list_rows_match_spec() {
        assert_eq!(
            list_row(0, &node(7000, 128, 0), false),
            "   0   127.0.0.1:7000      \t128          0\n"
        );
        assert_eq!(
            list_row(0, &node(7000, 128, 16777343), false),
            "   0   127.0.0.1:7000      \t128   16777343\n"
        );
        assert_eq!(
            list_row(0, &node(7000, 1, 0), false),
            "   0   127.0.0.1:7000      \t 1          0\n"
        );
        assert_eq!(
            list_row(3, &node(7105, 0, 16777343), false),
            "   3   127.0.0.1:7105      \t 0   16777343\n"
        );
        assert_eq!(
            list_row(1, &node(7001, 128, 1), true),
            "1 127.0.0.1:7001 128 1\n"
        );
    }

    #[test]
    fn percentages_truncate() {
        assert_eq!(use_pct(100, 1), 99);
        assert_eq!(use_pct(0, 0), i32::MIN);
    }
}
