//! The implemented subcommands, and the request helpers they share with
//! the original's `dog/common.c`.

pub mod attr;
pub mod backup;
pub mod check;
pub mod cluster;
pub mod lock;
pub mod md;
pub mod node;
pub mod object;
pub mod tree;
pub mod vdi;

use crate::app::Ctx;
use crate::{err, End, Res};
use sd_client::vdi::VdiError;
use sd_client::ClientError;
use sd_proto::{SdReq, SdRsp};
use std::net::SocketAddr;

/// The original's `send_light_req`: a header-only request; a non-success
/// answer is reported as `Response's result: <res>`. `Err(())` on any
/// failure (the network layer has printed its own lines).
pub async fn light(ctx: &mut Ctx, to: SocketAddr, req: &SdReq) -> Result<SdRsp, ()> {
    let (rsp, _) = ctx.net.exec(to, req, &[]).await.map_err(|_| ())?;
    if !rsp.result.is_success() {
        err!("Response's result: {}", rsp.result);
        return Err(());
    }
    Ok(rsp)
}

/// Prints the original's object-level message for a failed VDI data
/// operation (`Failed to read object <oid> <res>` — no colon, sic — or
/// `Failed to write object <oid>: <res>`; without the result when the
/// exchange itself failed).
pub fn report(e: &VdiError) {
    let with_res = |src: &ClientError, sep: &str| match src {
        ClientError::Res(r) => format!("{sep}{r}"),
        _ => String::new(),
    };
    match e {
        VdiError::Read { oid, source } => {
            err!("Failed to read object {oid:016x}{}", with_res(source, " "))
        }
        VdiError::Write { oid, source } | VdiError::UpdateIndex { oid, source } => {
            err!(
                "Failed to write object {oid:016x}{}",
                with_res(source, ": ")
            )
        }
        VdiError::Index { .. } | VdiError::OutOfRange { .. } => err!("{e}"),
    }
}

/// Ends a command with a returned status.
pub fn ret<T>(code: i32) -> Res<T> {
    Err(End::Ret(code))
}
