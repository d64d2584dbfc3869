//! Bad input gets a clear error and changes nothing: malformed requests on
//! the wire and wrong dog arguments, against a real cluster.

use sd_client::{Connection, Endpoint};
use sd_proto::*;
use sd_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn endpoint(c: &Cluster) -> Endpoint {
    Endpoint::Tcp(format!("127.0.0.1:{}", c.nodes[0].port).parse().unwrap())
}

#[test]
fn wire_errors_leave_the_connection_and_cluster_healthy() {
    let c = Cluster::start(3);
    c.format("3");
    c.dog_ok(&["vdi", "create", "keep", "1G"]);
    let before = c.dog_ok(&["vdi", "list", "-r"]);
    rt().block_on(async {
        let mut conn = Connection::connect(&endpoint(&c)).await.unwrap();
        // Unknown and unimplemented opcodes.
        for opcode in [0x00u8, 0x06, 0x7f, 0x91, 0xA7, 0xFF] {
            let mut r = SdReq::new(opcode);
            r.proto_ver = if opcode >= 0x80 {
                SD_SHEEP_PROTO_VER
            } else {
                SD_PROTO_VER
            };
            let (rsp, data) = conn.exec(&r, &[]).await.unwrap();
            assert_eq!(rsp.result, SdRes::INVALID_PARMS, "opcode {opcode:#x}");
            assert!(data.is_empty());
        }
        // Wrong protocol versions.
        let mut r = SdReq::new(op::GET_NODE_LIST);
        r.proto_ver = 2;
        assert_eq!(
            conn.exec(&r, &[]).await.unwrap().0.result,
            SdRes::VER_MISMATCH
        );
        let mut r = SdReq::new(op::READ_VDIS);
        r.proto_ver = 3;
        r.data_length = SD_VDI_BITMAP_SIZE as u32;
        assert_eq!(
            conn.exec(&r, &[]).await.unwrap().0.result,
            SdRes::VER_MISMATCH
        );
        // A read asking for more than the cap: refused, nothing allocated.
        let mut r = SdReq::new(op::READ_OBJ);
        r.data_length = u32::MAX;
        r.set_obj(ObjArgs {
            oid: vid_to_vdi_oid(sd_hash_vdi(b"keep")),
            ..Default::default()
        });
        let (rsp, data) = conn.exec(&r, &[]).await.unwrap();
        assert_eq!(rsp.result, SdRes::INVALID_PARMS);
        assert!(data.is_empty());
        // NEW_VDI with a short name payload, and with 32 copies.
        let mut r = SdReq::new(op::NEW_VDI);
        r.flags = flag::CMD_WRITE;
        r.data_length = 10;
        r.set_vdi(VdiArgs {
            vdi_size: 1 << 30,
            ..Default::default()
        });
        assert_eq!(
            conn.exec(&r, b"abcdefghij").await.unwrap().0.result,
            SdRes::INVALID_PARMS
        );
        r.data_length = 256;
        r.set_vdi(VdiArgs {
            vdi_size: 1 << 30,
            copies: 32,
            ..Default::default()
        });
        assert_eq!(
            conn.exec(&r, &le::fixed_str::<256>(b"bad"))
                .await
                .unwrap()
                .0
                .result,
            SdRes::INVALID_PARMS
        );
        // The same connection still works.
        let mut r = SdReq::new(op::GET_NODE_LIST);
        r.data_length = (SD_NODE_SIZE * 8) as u32;
        let (rsp, data) = conn.exec(&r, &[]).await.unwrap();
        assert_eq!(rsp.result, SdRes::SUCCESS);
        assert_eq!(data.len(), 3 * SD_NODE_SIZE);

        // An oversized write payload is skipped, not buffered, and the
        // connection stays in sync.
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", c.nodes[0].port))
            .await
            .unwrap();
        let mut r = SdReq::new(op::WRITE_OBJ);
        r.flags = flag::CMD_WRITE;
        r.data_length = SD_MAX_DATA_LENGTH + 1;
        r.set_obj(ObjArgs {
            oid: vid_to_data_oid(sd_hash_vdi(b"keep"), 0),
            ..Default::default()
        });
        raw.write_all(&r.encode()).await.unwrap();
        let chunk = vec![0xAAu8; 1 << 20];
        let mut left = r.data_length as usize;
        while left > 0 {
            let n = left.min(chunk.len());
            raw.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        let mut hdr = [0u8; 48];
        raw.read_exact(&mut hdr).await.unwrap();
        assert_eq!(SdRsp::decode(&hdr).result, SdRes::INVALID_PARMS);
        let mut r = SdReq::new(op::GET_NODE_LIST);
        r.data_length = (SD_NODE_SIZE * 8) as u32;
        raw.write_all(&r.encode()).await.unwrap();
        raw.read_exact(&mut hdr).await.unwrap();
        assert_eq!(SdRsp::decode(&hdr).result, SdRes::SUCCESS);
    });
    assert_eq!(
        c.dog_ok(&["vdi", "list", "-r"]),
        before,
        "bad input changed the VDI list"
    );
    assert!(
        c.nodes
            .iter()
            .all(|n| !n.objects().iter().any(|o| o.starts_with("00"))),
        "no data object was created"
    );
}

#[test]
fn dog_argument_errors() {
    let c = Cluster::start(1);
    // Unformatted cluster.
    let out = c.dog(&["vdi", "create", "x", "1G"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Failed to create VDI x: Waiting for cluster to be formatted\n"
    );
    c.format("1");
    let before = c.dog_ok(&["vdi", "list", "-r"]);

    let copies_help = "To create replicated vdi, set -c x\n  x(1 to 31)   - number of replicated copies\nTo create erasure coded vdi, set -c x:y\n  x(2,4,8,16)  - number of data strips\n  y(1 to 15)   - number of parity strips\n";
    for bad in ["0", "32"] {
        let out = c.dog(&["vdi", "create", "-c", bad, "x", "1G"]);
        assert_eq!(out.status.code(), Some(1), "-c {bad}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("Invalid parameter {bad}\n{copies_help}")
        );
    }
    let out = c.dog(&["vdi", "create", "big", "5T"]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "VDI size is larger than 4.0 TB bytes, please use '-y' to create a hyper volume with size up to 16 PB bytes or use '-z' to create larger object size volume\n"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Usage: dog vdi create"));
    let out = c.dog(&["vdi", "create", "x", "12Q"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Invalid size '12Q'\n"));
    assert_eq!(
        c.dog_ok(&["vdi", "list", "-r"]),
        before,
        "rejected commands changed the VDI list"
    );

    // A name over 255 bytes is truncated to 255, as the original does.
    let long = "n".repeat(300);
    c.dog_ok(&["vdi", "create", &long, "4M"]);
    let list = c.dog_ok(&["vdi", "list", "-r"]);
    let names: Vec<&str> = list.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(names, vec!["n".repeat(255).as_str()]);
    let out = c.dog(&["vdi", "create", &long, "4M"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Failed to create VDI nnn") && err.ends_with(": VDI exists already\n"),
        "{err}"
    );
}
