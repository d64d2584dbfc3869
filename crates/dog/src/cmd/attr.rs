//! `dog vdi setattr` / `dog vdi getattr` (CLI.md §2.3.11, §2.3.12):
//! key/value attributes of a VDI, stored by the cluster in attribute
//! objects found with GET_VDI_ATTR (PROTOCOL.md §5.7).

use super::ret;
use crate::app::Ctx;
use crate::out::Msg;
use crate::{err, Res};
use sd_client::vdi::{exec_ok, read_object, Redundancy};
use sd_proto::le::{put_u32, u32_at};
use sd_proto::*;

/// Exit status when the key exists (`setattr -x`).
const EXIT_EXISTS: i32 = 3;
/// Exit status when the key or the VDI is missing.
const EXIT_MISSING: i32 = 5;

/// The `sheepdog_vdi_attr` payload of GET_VDI_ATTR for `name`'s working
/// VDI, `key` and `value` (at most [`SD_MAX_VDI_ATTR_VALUE_LEN`] bytes).
fn attr_payload(name: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; VDI_ATTR_SIZE];
    let field = |b: &mut [u8], at: usize, s: &[u8]| {
        let n = s.len().min(255);
        b[at..at + n].copy_from_slice(&s[..n]);
    };
    field(&mut b, 0, name);
    field(&mut b, 528, key);
    put_u32(&mut b, 524, value.len() as u32);
    b[VDI_ATTR_VALUE_OFFSET..VDI_ATTR_VALUE_OFFSET + value.len()].copy_from_slice(value);
    b
}

/// The original's `find_vdi_attr_oid`: GET_VDI_ATTR with the given flags;
/// the attribute object's oid on success, else the result code (EIO when
/// the daemon could not be reached).
async fn find_attr(
    ctx: &mut Ctx,
    name: &[u8],
    key: &[u8],
    value: &[u8],
    flags: u16,
) -> Result<u64, SdRes> {
    let payload = attr_payload(name, key, value);
    let mut req = SdReq::new(op::GET_VDI_ATTR);
    req.flags = flag::CMD_WRITE | flags;
    req.data_length = payload.len() as u32;
    let target = ctx.target();
    match exec_ok(&mut ctx.net.at(target), &req, &payload).await {
        Ok((rsp, _)) => Ok(vid_to_attr_oid(rsp.vdi_id(), rsp.attr_id())),
        Err(e) => Err(e.res()),
    }
}

/// A value from stdin: all of it, at most [`SD_MAX_VDI_ATTR_VALUE_LEN`]
/// bytes.
fn read_stdin_value() -> std::io::Result<Vec<u8>> {
    let mut v = vec![0; SD_MAX_VDI_ATTR_VALUE_LEN];
    let n = super::vdi::read_stdin(&mut v)?;
    v.truncate(n);
    Ok(v)
}

/// `vdi setattr [-d] [-x] <name> <key> [value]`: the value comes from the
/// operand or stdin, up to its first NUL.
pub async fn setattr(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let Some(key) = ctx.take_operand() else {
        err!("Please specify the attribute key");
        return ret(64);
    };
    let (delete, exclusive) = (ctx.opts.vdi.delete, ctx.opts.vdi.exclusive);
    let value = match ctx.take_operand() {
        // The original copies an oversized operand past its buffer; here
        // it is refused before anything is sent.
        Some(v) if v.len() > SD_MAX_VDI_ATTR_VALUE_LEN => {
            err!("Failed to set attribute: {}", SdRes::INVALID_PARMS);
            return ret(1);
        }
        Some(v) => v,
        None if delete => Vec::new(),
        // At most the largest value: the original stops reading there.
        None => match read_stdin_value() {
            Ok(v) => v,
            Err(e) => {
                err!(
                    "Failed to read attribute value from stdin: {}",
                    crate::net::strerror(&e)
                );
                return ret(2);
            }
        },
    };
    let value = crate::text::cstr(&value);
    let mut flags = if delete {
        flag::CMD_DEL
    } else {
        flag::CMD_CREAT
    };
    if exclusive {
        flags |= flag::CMD_EXCL;
    }
    match find_attr(ctx, &name, &key, value, flags).await {
        Ok(_) => Ok(()),
        Err(SdRes::VDI_EXIST) => {
            Msg::new()
                .s("The attribute '")
                .b(&key)
                .s("' already exists")
                .err();
            ret(EXIT_EXISTS)
        }
        Err(SdRes::NO_OBJ) => {
            Msg::new().s("Attribute '").b(&key).s("' not found").err();
            ret(EXIT_MISSING)
        }
        Err(SdRes::NO_VDI) => {
            err!("VDI not found");
            ret(EXIT_MISSING)
        }
        Err(r) => {
            err!("Failed to set attribute: {r}");
            ret(1)
        }
    }
}

/// `vdi getattr <name> <key>`: the raw value on stdout, no newline.
pub async fn getattr(ctx: &mut Ctx) -> Res<()> {
    let name = ctx.take_operand().unwrap_or_default();
    let Some(key) = ctx.take_operand() else {
        err!("Please specify the attribute key");
        return ret(64);
    };
    let oid = match find_attr(ctx, &name, &key, &[], 0).await {
        Ok(oid) => oid,
        Err(SdRes::NO_OBJ) => {
            Msg::new().s("Attribute '").b(&key).s("' not found").err();
            return ret(EXIT_MISSING);
        }
        Err(SdRes::NO_VDI) => {
            err!("VDI not found");
            return ret(EXIT_MISSING);
        }
        Err(r) => {
            err!("Failed to find attribute oid: {r}");
            return ret(EXIT_MISSING);
        }
    };
    let target = ctx.target();
    let at = &mut ctx.net.at(target);
    let attr = match read_object(
        at,
        oid,
        0,
        VDI_ATTR_SIZE as u32,
        Redundancy::default(),
        flag::CMD_DIRECT,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            super::report(&e);
            err!("Failed to read attribute oid: {}", e.res());
            return ret(2);
        }
    };
    let len = (u32_at(&attr, 524) as usize).min(SD_MAX_VDI_ATTR_VALUE_LEN);
    if let Err(e) = crate::out::write_raw(&attr[VDI_ATTR_VALUE_OFFSET..VDI_ATTR_VALUE_OFFSET + len])
    {
        err!("Failed to write to stdout: {}", crate::net::strerror(&e));
        return ret(2);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_layout() {
        let p = attr_payload(b"vdi", b"key", b"value");
        assert_eq!(p.len(), 66_320);
        assert_eq!(&p[..4], b"vdi\0");
        assert_eq!(&p[256..260], &[0; 4]);
        assert_eq!(u32_at(&p, 524), 5);
        assert_eq!(&p[528..532], b"key\0");
        assert_eq!(&p[784..790], b"value\0");
        let long = attr_payload(&[b'n'; 300], b"k", &[7; 65536]);
        assert_eq!(long[255], 0);
        assert_eq!(u32_at(&long, 524), 65536);
    }
}
