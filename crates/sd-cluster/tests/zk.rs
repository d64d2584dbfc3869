//! The ZooKeeper driver against a real ZooKeeper server (started per test
//! by `sd_testkit::zk::ZkServer`; each test is skipped, with a note, if
//! ZooKeeper cannot be started here).

use sd_cluster::{ClusterError, Delivered, Driver, Event};
use sd_proto::{NodeId, SdNode};
use sd_testkit::zk::ZkServer;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// What the member process prints once it joined and holds the block.
const READY: &str = "SD_ZK_CHILD_READY";

/// Session timeout of the failure-detection tests.
const TIMEOUT_MS: u64 = 2000;

fn server() -> Option<ZkServer> {
    match ZkServer::try_start() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipping: ZooKeeper cannot be started here: {e}");
            None
        }
    }
}

fn node(port: u16) -> SdNode {
    SdNode {
        nid: NodeId::new("127.0.0.1".parse().unwrap(), port),
        nr_vnodes: 128,
        zone: port as u32,
        space: 1,
    }
}

fn driver(addr: &str, cluster: &str, timeout_ms: u64) -> Driver {
    Driver::from_option(&format!("zookeeper:{addr}/{cluster},timeout={timeout_ms}")).unwrap()
}

async fn next(rx: &mut UnboundedReceiver<Delivered>) -> Delivered {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

async fn take(rx: &mut UnboundedReceiver<Delivered>, n: usize) -> Vec<Delivered> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(next(rx).await);
    }
    v
}

/// Nothing arrives for `d`.
async fn quiet(rx: &mut UnboundedReceiver<Delivered>, d: Duration) {
    if let Ok(ev) = tokio::time::timeout(d, rx.recv()).await {
        panic!("unexpected {ev:?}");
    }
}

fn is_join(d: &Delivered, port: u16) -> bool {
    matches!(&d.event, Event::Join { node, .. } if node.nid.port == port)
}

fn is_leave(d: &Delivered, port: u16) -> bool {
    matches!(&d.event, Event::Leave { nid, .. } if nid.port == port)
}

fn is_msg(d: &Delivered, m: &[u8]) -> bool {
    matches!(&d.event, Event::Notify { msg, .. } if msg == m)
}

/// Waits for the LEAVE of `port`, skipping anything else.
async fn until_leave(rx: &mut UnboundedReceiver<Delivered>, port: u16) -> Delivered {
    loop {
        let d = next(rx).await;
        if is_leave(&d, port) {
            return d;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_see_identical_order() {
    let Some(zk) = server() else { return };
    let a = driver(&zk.addr(), "order", 10_000);
    let b = driver(&zk.addr(), "order", 10_000);
    let c = driver(&zk.addr(), "order", 10_000);
    let mut ra = a.join(node(7000), vec![1]).await.unwrap();
    let mut rb = b.join(node(7001), vec![2]).await.unwrap();
    assert_ne!(a.incarnation(), b.incarnation());

    // Two members, appending concurrently.
    let spam = |d: Driver, tag: u8| async move {
        let mut seqs = Vec::new();
        for i in 0..20u8 {
            seqs.push((vec![tag, i], d.notify(vec![tag, i]).await.unwrap()));
        }
        seqs
    };
    let (sa, sb) = tokio::join!(spam(a.clone(), b'a'), spam(b.clone(), b'b'));
    let seen_a = take(&mut ra, 42).await;
    let seen_b = take(&mut rb, 42).await;
    assert_eq!(seen_a, seen_b);
    assert!(is_join(&seen_a[0], 7000) && is_join(&seen_a[1], 7001));
    // notify returns the position the message is delivered at.
    for (msg, seq) in sa.iter().chain(&sb) {
        let d = seen_a.iter().find(|d| is_msg(d, msg)).unwrap();
        assert_eq!(d.seq, *seq);
    }
    assert!(seen_a.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(seen_a[0].seq, 1);

    // A third member replays the history, then everyone sees the same.
    let mut rc = c.join(node(7002), vec![3]).await.unwrap();
    b.update_node(SdNode {
        space: 99,
        ..node(7001)
    })
    .await
    .unwrap();
    let (s1, s2, s3) = tokio::join!(
        spam(a.clone(), b'A'),
        spam(b.clone(), b'B'),
        spam(c.clone(), b'C')
    );
    assert_eq!(s1.len() + s2.len() + s3.len(), 60);
    let total = 42 + 2 + 60;
    let all_c = take(&mut rc, total).await;
    let mut all_a = seen_a.clone();
    all_a.extend(take(&mut ra, total - 42).await);
    let mut all_b = seen_b;
    all_b.extend(take(&mut rb, total - 42).await);
    assert_eq!(all_a, all_c);
    assert_eq!(all_b, all_c);
    assert!(is_join(&all_c[42], 7002));
    assert!(matches!(&all_c[43].event, Event::UpdateNode { node } if node.space == 99));
    // Everything appended so far is before stream_end.
    assert_eq!(c.stream_end().await.unwrap(), all_c.last().unwrap().seq);
    for r in [&mut ra, &mut rb, &mut rc] {
        quiet(r, Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_is_mutually_exclusive() {
    let Some(zk) = server() else { return };
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut keep = Vec::new();
    for i in 0..3u16 {
        let d = driver(&zk.addr(), "block", 10_000);
        keep.push(d.join(node(7000 + i), vec![]).await.unwrap());
        for _ in 0..2 {
            let (d, inside, entered) = (d.clone(), inside.clone(), entered.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    let g = d.block().await.unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    entered.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(g);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(entered.load(Ordering::SeqCst), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_session_produces_one_leave() {
    let Some(zk) = server() else { return };
    let a = driver(&zk.addr(), "drop", 10_000);
    let b = driver(&zk.addr(), "drop", 10_000);
    let c = driver(&zk.addr(), "drop", 10_000);
    let mut ra = a.join(node(7000), vec![]).await.unwrap();
    let rb = b.join(node(7001), vec![]).await.unwrap();
    let mut rc = c.join(node(7002), vec![]).await.unwrap();
    let inc_b = b.incarnation().unwrap();
    let joins = take(&mut ra, 3).await;
    assert_eq!(joins, take(&mut rc, 3).await);
    // A crash without a goodbye: the client goes away, no LEAVE appended.
    let t = Instant::now();
    drop(rb);
    drop(b);
    let ev = until_leave(&mut ra, 7001).await;
    eprintln!("closed session -> LEAVE in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(matches!(ev.event, Event::Leave { incarnation, .. } if incarnation == inc_b));
    assert_eq!(next(&mut rc).await, ev);
    // Both survivors noticed; exactly one LEAVE reached the stream.
    quiet(&mut ra, Duration::from_millis(500)).await;
    quiet(&mut rc, Duration::from_millis(10)).await;
}

/// Not a test on its own: the body of the member process that
/// `killed_member_produces_leave` starts and SIGKILLs.
#[test]
fn child_member() {
    let Ok(opt) = std::env::var("SD_ZK_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let d = Driver::from_option(&opt).unwrap();
        let mut rx = d.join(node(7100), vec![]).await.unwrap();
        while !is_join(&next(&mut rx).await, 7100) {}
        let _guard = d.block().await.unwrap();
        // libtest may have printed "test child_member ... " on this line.
        println!("{READY}");
        loop {
            if rx.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
    });
}

/// A member process, SIGKILLed at the latest when the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_produces_leave() {
    let Some(zk) = server() else { return };
    let opt = format!("zookeeper:{}/kill,timeout={TIMEOUT_MS}", zk.addr());
    let a = Driver::from_option(&opt).unwrap();
    let mut ra = a.join(node(7000), vec![]).await.unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_member", "--nocapture", "--test-threads=1"])
            .env("SD_ZK_CHILD", &opt)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        for line in std::io::BufReader::new(out).lines() {
            if line.unwrap().ends_with(READY) {
                return;
            }
        }
        panic!("the member process ended before joining");
    });
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("the member process joins in time")
        .unwrap();
    assert!(is_join(&next(&mut ra).await, 7000));
    assert!(is_join(&next(&mut ra).await, 7100));
    // The child holds the block; ours waits for its death.
    let blocked = {
        let a = a.clone();
        tokio::spawn(async move {
            let g = a.block().await.unwrap();
            (Instant::now(), g)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished(), "block() ignored the holder");
    let t = Instant::now();
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    until_leave(&mut ra, 7100).await;
    let took = t.elapsed();
    let (got_block, _g) = blocked.await.unwrap();
    eprintln!(
        "SIGKILLed member -> LEAVE in {took:?}, its block released after {:?} \
         (session timeout {TIMEOUT_MS} ms)",
        got_block - t
    );
    assert!(took < Duration::from_millis(TIMEOUT_MS + 1500));
    quiet(&mut ra, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resets_when_nobody_is_alive() {
    let Some(zk) = server() else { return };
    let addr = zk.addr();
    let a = driver(&addr, "reset", 10_000);
    let b = driver(&addr, "reset", 10_000);
    let mut ra = a.join(node(7000), vec![]).await.unwrap();
    a.notify(b"x".to_vec()).await.unwrap();
    let mut rb = b.join(node(7001), vec![]).await.unwrap();
    let first = take(&mut rb, 3).await;
    assert!(is_join(&first[0], 7000) && is_msg(&first[1], b"x") && is_join(&first[2], 7001));
    assert_eq!(take(&mut ra, 3).await, first);
    a.leave().await.unwrap();
    // The stream stops (our own LEAVE may or may not get through first).
    while let Some(d) = tokio::time::timeout(Duration::from_secs(5), ra.recv())
        .await
        .unwrap()
    {
        assert!(is_leave(&d, 7000), "{d:?}");
    }
    assert!(matches!(a.notify(vec![]).await, Err(ClusterError::Stopped)));
    assert!(is_leave(&next(&mut rb).await, 7000));

    // b is still alive: a joiner gets the whole history.
    let c = driver(&addr, "reset", 10_000);
    let mut rc = c.join(node(7002), vec![]).await.unwrap();
    let hist = take(&mut rc, 5).await;
    assert_eq!(hist[..3], first[..]);
    assert!(is_leave(&hist[3], 7000) && is_join(&hist[4], 7002));
    b.leave().await.unwrap();
    c.leave().await.unwrap();

    // Nobody alive: the next joiner starts a new stream.
    let d = driver(&addr, "reset", 10_000);
    let mut rd = d.join(node(7003), vec![]).await.unwrap();
    let ev = next(&mut rd).await;
    assert!(is_join(&ev, 7003));
    assert_eq!(ev.seq, 1);
    quiet(&mut rd, Duration::from_millis(300)).await;
    // ... and the old generation is collected.
    let raw = zookeeper_client::Client::connect(&addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = raw.list_children("/reset/queue").await.unwrap();
        let l = raw.list_children("/reset/left").await.unwrap();
        if q.len() == 1 && l.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old generations left: {q:?} {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ids_are_independent() {
    let Some(zk) = server() else { return };
    let x = driver(&zk.addr(), "c1", 10_000);
    let y = driver(&zk.addr(), "c2", 10_000);
    let z = Driver::from_option(&format!("zookeeper:{}", zk.addr())).unwrap();
    let mut rx = x.join(node(7000), vec![]).await.unwrap();
    let mut ry = y.join(node(7000), vec![]).await.unwrap();
    let mut rz = z.join(node(7000), vec![]).await.unwrap();
    x.notify(b"one".to_vec()).await.unwrap();
    for r in [&mut rx, &mut ry, &mut rz] {
        let ev = next(r).await;
        assert!(is_join(&ev, 7000) && ev.seq == 1);
    }
    assert!(is_msg(&next(&mut rx).await, b"one"));
    quiet(&mut ry, Duration::from_millis(200)).await;
    quiet(&mut rz, Duration::from_millis(200)).await;
    // A second member of c1 sees c1's history only.
    let x2 = driver(&zk.addr(), "c1", 10_000);
    let mut rx2 = x2.join(node(7001), vec![]).await.unwrap();
    let h = take(&mut rx2, 3).await;
    assert!(is_join(&h[0], 7000) && is_msg(&h[1], b"one") && is_join(&h[2], 7001));
    // Blocks are per cluster.
    let _gx = x.block().await.unwrap();
    let gy = tokio::time::timeout(Duration::from_secs(2), y.block()).await;
    assert!(gy.unwrap().is_ok());
    assert!(tokio::time::timeout(Duration::from_millis(300), x2.block())
        .await
        .is_err());
    // The default base is /sheepdog.
    let raw = zookeeper_client::Client::connect(&zk.addr()).await.unwrap();
    let mut roots = raw.list_children("/").await.unwrap();
    roots.sort();
    assert_eq!(roots, ["c1", "c2", "sheepdog", "zookeeper"]);
}

/// A TCP forwarder to ZooKeeper that can partition its clients away.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = l.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped at once
                }
                let target = target.clone();
                cs.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Proxy { port, cut, conns }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Partitions: closes every connection and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_closes_the_stream() {
    let Some(zk) = server() else { return };
    let proxy = Proxy::start(zk.addr()).await;
    let a = driver(&zk.addr(), "expiry", TIMEOUT_MS);
    let b = driver(&proxy.addr(), "expiry", TIMEOUT_MS);
    let mut ra = a.join(node(7000), vec![]).await.unwrap();
    let mut rb = b.join(node(7001), vec![]).await.unwrap();
    assert_eq!(take(&mut ra, 2).await, take(&mut rb, 2).await);

    let t = Instant::now();
    proxy.cut();
    // b stops on its own, even before it can reach ZooKeeper again ...
    let closed = tokio::spawn(async move {
        let closed = tokio::time::timeout(Duration::from_secs(10), rb.recv())
            .await
            .expect("b's stream closes");
        assert!(closed.is_none(), "unexpected {closed:?}");
        t.elapsed()
    });
    // ... and the others drop b once the ensemble expires its session.
    until_leave(&mut ra, 7001).await;
    let leave_after = t.elapsed();
    let closed_after = closed.await.unwrap();
    eprintln!(
        "partitioned member: LEAVE after {leave_after:?}, its own stream closed after \
         {closed_after:?} (session timeout {TIMEOUT_MS} ms)"
    );
    assert!(closed_after < Duration::from_millis(TIMEOUT_MS + 500));
    assert!(matches!(
        b.notify(vec![]).await,
        Err(ClusterError::SessionExpired)
    ));
    assert!(matches!(
        b.stream_end().await,
        Err(ClusterError::SessionExpired)
    ));
    assert!(b.block().await.is_err());
    // Healing the network does not bring the stale member back.
    proxy.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        b.notify(vec![]).await,
        Err(ClusterError::SessionExpired)
    ));
    a.notify(b"still here".to_vec()).await.unwrap();
    assert!(is_msg(&next(&mut ra).await, b"still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_server_restart_within_the_session_timeout() {
    let Some(mut zk) = server() else { return };
    let a = driver(&zk.addr(), "restart", 15_000);
    let b = driver(&zk.addr(), "restart", 15_000);
    let mut ra = a.join(node(7000), vec![]).await.unwrap();
    let mut rb = b.join(node(7001), vec![]).await.unwrap();
    assert_eq!(take(&mut ra, 2).await, take(&mut rb, 2).await);
    let t = Instant::now();
    zk.restart();
    eprintln!("ZooKeeper restarted in {:?}", t.elapsed());
    // Appends are not retried by the driver: retry until reconnected.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = a.notify(b"after".to_vec()).await {
        assert!(Instant::now() < deadline, "no reconnection: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ea = next(&mut ra).await;
    assert_eq!(ea, next(&mut rb).await);
    assert!(is_msg(&ea, b"after"), "{ea:?}");
    for r in [&mut ra, &mut rb] {
        quiet(r, Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joiner_replays_a_long_history() {
    let Some(zk) = server() else { return };
    const N: usize = 3000;
    let a = driver(&zk.addr(), "long", 10_000);
    let _ra = a.join(node(7000), vec![]).await.unwrap();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..N).step_by(8) {
                a.notify((i as u32).to_le_bytes().to_vec()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let appended = t.elapsed();
    let b = driver(&zk.addr(), "long", 10_000);
    let t = Instant::now();
    let mut rb = b.join(node(7001), vec![]).await.unwrap();
    let all = take(&mut rb, N + 2).await;
    eprintln!(
        "{N} events appended in {appended:?}; a joiner replayed them in {:?}",
        t.elapsed()
    );
    assert!(all.iter().enumerate().all(|(i, d)| d.seq == i as u64 + 1));
    assert!(is_join(&all[N + 1], 7001));
}
