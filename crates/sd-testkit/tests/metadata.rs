//! A node's config and epoch files are trusted only when they are whole:
//! a truncated, corrupt or unknown-version file stops sheep at start with
//! a message naming it, and the file is left as it was (never a silent
//! reformat).

use sd_testkit::*;
use std::path::PathBuf;
use std::time::Duration;

/// Restarts node 0 with `path` holding `bytes`: it must refuse to start,
/// saying `why` about the file, and leave the file untouched.
fn refuses(c: &mut Cluster, path: &PathBuf, bytes: &[u8], why: &str) {
    std::fs::write(path, bytes).unwrap();
    c.restart(0);
    let st = c.wait_exit(0, Duration::from_secs(10));
    assert!(!st.success(), "sheep started with {why}");
    let err = std::fs::read_to_string(c.root().join(format!("stderr.{}", c.nodes[0].port)))
        .unwrap_or_default();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(why) && err.contains(&name), "{err}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        bytes,
        "the file is left as it was"
    );
}

#[test]
fn untrustworthy_metadata_stops_sheep_at_start() {
    let mut c = Cluster::start(1);
    c.format("1");
    c.dog_ok(&["vdi", "create", "v", "8M"]);
    c.terminate(0);
    let config = c.nodes[0].dir.join("config");
    let epoch = c.nodes[0].dir.join("epoch").join("00000001");
    let good_config = std::fs::read(&config).unwrap();
    let good_epoch = std::fs::read(&epoch).unwrap();
    assert_eq!(good_config.len(), 44, "40 bytes and their CRC32C");

    refuses(&mut c, &config, &good_config[..20], "truncated (20 bytes)");
    refuses(&mut c, &config, &[], "truncated (0 bytes)");
    let mut flipped = good_config.clone();
    flipped[0] ^= 0x40;
    refuses(&mut c, &config, &flipped, "checksum mismatch");
    let mut old = good_config[..40].to_vec();
    old[30] = 5;
    refuses(&mut c, &config, &old, "format version 0x0005");
    std::fs::write(&config, &good_config).unwrap();
    refuses(
        &mut c,
        &epoch,
        &good_epoch[..50],
        "truncated or corrupt (50 bytes)",
    );
    let mut flipped = good_epoch.clone();
    flipped[3] ^= 0x01;
    refuses(&mut c, &epoch, &flipped, "checksum mismatch");

    // Whole files again (the config as the original writes it, 40 bytes
    // without a checksum, is accepted): the node comes back with its VDI.
    std::fs::write(&epoch, &good_epoch).unwrap();
    std::fs::write(&config, &good_config[..40]).unwrap();
    c.restart(0);
    c.wait_up(0);
    c.wait_running();
    assert!(c.dog_ok(&["vdi", "list", "-r"]).contains(" v "));
}
