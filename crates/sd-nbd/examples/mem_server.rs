//! Serves one sparse in-memory export over NBD, for trying clients by hand
//! and for rough throughput numbers without a cluster:
//!
//! ```text
//! cargo run --release -p sd-nbd --example mem_server -- 127.0.0.1:10809 disk 1073741824
//! nbdinfo nbd://127.0.0.1:10809/disk
//! ```

use std::sync::Arc;

use sd_nbd::mem::{MemExport, MemExports};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:10809".into());
    let name = args.next().unwrap_or_else(|| "disk".into());
    let size: u64 = match args.next().map(|s| s.parse()) {
        None => 1 << 30,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("size must be a number of bytes: {e}");
            std::process::exit(2);
        }
    };
    let exports = Arc::new(MemExports::new());
    exports.insert(&name, Arc::new(MemExport::new(size)));
    eprintln!("serving {name:?} ({size} bytes) on nbd://{addr}/{name}");
    sd_nbd::listen(addr, exports).await
}
