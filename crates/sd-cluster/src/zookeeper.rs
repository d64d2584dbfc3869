//! The `zookeeper` driver: sheep on many hosts share one ZooKeeper ensemble.
//!
//! Like [`crate::LocalDriver`], this driver only transports a totally
//! ordered event stream; it decides nothing. The znode layout under the base
//! path `B` (`/sheepdog`, or `/<cluster_id>` from the option, so several
//! clusters can share one ensemble) is:
//!
//! ```text
//! B/member/<incarnation:016x>      ephemeral, data = the node's SdNode: liveness
//! B/queue/<gen:010>/               one generation of the stream (persistent sequential)
//! B/queue/<gen:010>/<seq:010>      one event (persistent sequential), data = Event::encode
//! B/left/<gen:010>/<incarnation>   "a LEAVE for this incarnation is in generation gen"
//! B/joinlock/…                     lock recipe serialising joins (and stream resets)
//! B/lock/…                         lock recipe behind block()
//! ```
//!
//! * **Order.** ZooKeeper assigns sequence numbers in commit order, so the
//!   entries of a generation, read by sequence, are the same stream on
//!   every member. The delivered `seq` is the entry's sequence + 1 (so the
//!   first event is 1 and "applied up to 0" means nothing applied); `time`
//!   is the appender's wall clock carried in the entry, identical for all.
//! * **History.** A joiner reads its generation from the first entry, so it
//!   replays the cluster's history, then its own JOIN, then what follows.
//! * **Reset.** Under the join lock, a joiner that finds no live member
//!   (`B/member` empty) starts a new generation and later deletes the older
//!   ones; otherwise it joins the newest generation. A member's ephemeral
//!   znode is created (under the same lock) before its JOIN is appended, so
//!   a generation with a live member is never replaced.
//! * **Liveness.** The incarnation is the ZooKeeper session id. Every member
//!   watches `B/member`; a member whose JOIN it has read but whose znode is
//!   gone is dead, and it appends a LEAVE. The LEAVE is created in one
//!   multi-op with the `B/left/<gen>/<incarnation>` marker, so exactly one
//!   LEAVE per incarnation reaches the stream (a clean [`ZkDriver::leave`]
//!   uses the same marker). A crashed process is detected when ZooKeeper
//!   expires its session: within the session timeout (+ one server tick).
//! * **Session loss.** When the session expires, or ZooKeeper has been
//!   unreachable for about a session timeout since we last heard from it
//!   (when the ensemble expires the session and the others append our
//!   LEAVE), the driver stops: the delivery channel closes and every later
//!   call returns [`ClusterError::SessionExpired`]. The daemon must then
//!   stop serving (it has a stale view) — see [`crate::Driver::join`]. A
//!   shorter disconnection is invisible apart from delayed events and calls,
//!   except that after `2/3` of the timeout without a reply the driver
//!   reports lost contact ([`ZkDriver::contact`]), so the daemon stops
//!   serving I/O before the others can have moved on without it.
//!   Dropping the driver and its receiver closes the session: the others
//!   see the member znode vanish and append our LEAVE at once.
//! * **Restarts.** A node restarting while its old session still lives
//!   (within the timeout) joins the old generation and sees the LEAVE of
//!   its previous incarnation once that session expires; likewise a whole
//!   cluster restarted within the timeout replays its old generation.
//! * **Appends are not retried** on a connection loss: the event may or
//!   may not be in the stream, the caller gets an error (a retried append
//!   could apply an operation twice). LEAVEs are retried (the marker makes
//!   them idempotent).

use crate::event::*;
use crate::{now_secs, ClusterError, Result, DRIVER_SYNTAX};
use sd_proto::*;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use zookeeper_client as zk;

/// Session timeout when the option gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);
/// Base znode when the option gives no `/cluster_id`.
pub const DEFAULT_BASE: &str = "/sheepdog";

/// Pause before retrying a read after a connection loss.
const RETRY: Duration = Duration::from_millis(50);
/// Most queue entries requested at once while catching up.
const MAX_BATCH: usize = 256;
/// Deletions per multi-op when collecting old generations.
const GC_CHUNK: usize = 500;

const PERSISTENT: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
const PERSISTENT_SEQ: zk::CreateOptions<'static> =
    zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
const EPHEMERAL: zk::CreateOptions<'static> =
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());

impl From<zk::Error> for ClusterError {
    fn from(e: zk::Error) -> Self {
        match e {
            zk::Error::SessionExpired => ClusterError::SessionExpired,
            zk::Error::ClientClosed => ClusterError::Stopped,
            e => ClusterError::Zookeeper(e),
        }
    }
}

impl From<zk::MultiWriteError> for ClusterError {
    fn from(e: zk::MultiWriteError) -> Self {
        zk::Error::from(e).into()
    }
}

/// The parsed option string after `zookeeper:`:
/// `host:port[,host:port...][/cluster_id][,timeout=ms]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkOptions {
    /// Ensemble members, `host:port` (IPv6 hosts in brackets).
    pub servers: Vec<String>,
    /// Names the cluster's base znode (`/<cluster_id>`); `None` is
    /// `/sheepdog`. One or more `/`-separated components of
    /// `[A-Za-z0-9._-]`.
    pub cluster_id: Option<String>,
    /// Session timeout to ask the ensemble for (it may clamp it).
    pub timeout: Duration,
}

fn option_error(what: impl fmt::Display) -> ClusterError {
    ClusterError::Option(format!("{what} (expected {DRIVER_SYNTAX})"))
}

fn check_server(s: &str) -> std::result::Result<(), String> {
    let port = if let Some(r) = s.strip_prefix('[') {
        let (h, rest) = r
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in zookeeper server '{s}'"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("invalid IPv6 address in zookeeper server '{s}'"))?;
        rest.strip_prefix(':')
            .ok_or_else(|| format!("zookeeper server '{s}' is not host:port"))?
    } else {
        let (h, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("zookeeper server '{s}' is not host:port"))?;
        if h.is_empty()
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(format!(
                "invalid host in zookeeper server '{s}' (IPv6 addresses go in brackets)"
            ));
        }
        port
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("invalid port '{port}' in zookeeper server '{s}'")),
    }
}

fn check_cluster_id(id: &str) -> std::result::Result<(), String> {
    let ok = !id.is_empty()
        && id.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_'))
        })
        && id.split('/').next() != Some("zookeeper");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid cluster id '{id}': one or more '/'-separated names of \
             letters, digits, '.', '-' and '_' (not '.', '..' or 'zookeeper')"
        ))
    }
}

impl ZkOptions {
    /// Parses the option string after `zookeeper:`.
    pub fn parse(s: &str) -> Result<ZkOptions> {
        if s.is_empty() {
            return Err(option_error("You must specify zookeeper servers."));
        }
        let mut servers = Vec::new();
        let mut cluster_id: Option<String> = None;
        let mut timeout = None;
        for item in s.split(',') {
            if let Some(v) = item.strip_prefix("timeout=") {
                if timeout.is_some() {
                    return Err(option_error("timeout= given twice"));
                }
                let ms = v
                    .parse::<u64>()
                    .ok()
                    .filter(|&ms| ms > 0 && ms <= i32::MAX as u64)
                    .ok_or_else(|| {
                        option_error(format!(
                            "invalid session timeout '{v}': a positive number of milliseconds"
                        ))
                    })?;
                timeout = Some(Duration::from_millis(ms));
                continue;
            }
            if timeout.is_some() {
                return Err(option_error(format!(
                    "'{item}' after timeout=: the timeout comes last"
                )));
            }
            if cluster_id.is_some() {
                return Err(option_error(format!(
                    "'{item}' after the /cluster_id: the cluster id follows the last server"
                )));
            }
            if item.is_empty() {
                return Err(option_error("empty zookeeper server"));
            }
            if item.contains('=') {
                return Err(option_error(format!("unknown zookeeper option '{item}'")));
            }
            let (server, id) = match item.split_once('/') {
                Some((server, id)) => (server, Some(id)),
                None => (item, None),
            };
            check_server(server).map_err(option_error)?;
            servers.push(server.to_string());
            if let Some(id) = id {
                check_cluster_id(id).map_err(option_error)?;
                cluster_id = Some(id.to_string());
            }
        }
        if servers.is_empty() {
            return Err(option_error("You must specify zookeeper servers."));
        }
        Ok(ZkOptions {
            servers,
            cluster_id,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
        })
    }

    /// The cluster's base znode.
    pub fn base(&self) -> String {
        match &self.cluster_id {
            Some(id) => format!("/{id}"),
            None => DEFAULT_BASE.to_string(),
        }
    }
}

impl fmt::Display for ZkOptions {
    /// The canonical option string (parses back to the same options).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.servers.join(","))?;
        if let Some(id) = &self.cluster_id {
            write!(f, "/{id}")?;
        }
        write!(f, ",timeout={}", self.timeout.as_millis())
    }
}

/// Znode paths of one cluster.
#[derive(Clone, Debug)]
struct Paths {
    base: String,
}

impl Paths {
    fn members(&self) -> String {
        format!("{}/member", self.base)
    }
    fn member(&self, incarnation: u64) -> String {
        format!("{}/member/{incarnation:016x}", self.base)
    }
    fn queues(&self) -> String {
        format!("{}/queue", self.base)
    }
    fn lefts(&self) -> String {
        format!("{}/left", self.base)
    }
    fn join_lock(&self) -> String {
        format!("{}/joinlock", self.base)
    }
    fn block_lock(&self) -> String {
        format!("{}/lock", self.base)
    }
}

/// Why a session stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Left,
    Lost,
}

/// One joined session: what the background tasks and the calls share.
struct Session {
    /// The client; dropped when the session ends.
    client: Mutex<Option<zk::Client>>,
    /// Why the session ended, once it has (the first reason wins).
    ended: watch::Sender<Option<Ended>>,
    /// This generation's queue, `B/queue/<gen>`.
    queue: String,
    /// This generation's LEAVE markers, `B/left/<gen>`.
    left: String,
    members: String,
    me: NodeId,
    incarnation: u64,
    /// Stops the background tasks (set when the session ends, or when the
    /// stream's receiver is gone).
    stop: watch::Sender<bool>,
    /// Members according to the stream read so far (incarnation → id).
    tracked: Mutex<HashMap<u64, NodeId>>,
    /// Signalled when the reader sees a JOIN (the liveness check reruns).
    joined: Notify,
}

fn ended_error(why: Ended) -> ClusterError {
    match why {
        Ended::Left => ClusterError::Stopped,
        Ended::Lost => ClusterError::SessionExpired,
    }
}

impl Session {
    fn client(&self) -> Result<zk::Client> {
        if let Some(why) = self.ended() {
            return Err(ended_error(why));
        }
        self.client
            .lock()
            .unwrap()
            .clone()
            .ok_or(ClusterError::Stopped)
    }

    fn ended(&self) -> Option<Ended> {
        *self.ended.borrow()
    }

    /// Ends the session (the first reason wins) and stops the tasks; the
    /// ZooKeeper session closes once the last client clone is dropped.
    fn end(&self, why: Ended) {
        let first = self.ended.send_if_modified(|e| {
            let first = e.is_none();
            if first {
                *e = Some(why);
            }
            first
        });
        if first {
            if why == Ended::Lost {
                tracing::error!(
                    "zookeeper session {:#x} lost: this node is out of the cluster",
                    self.incarnation
                );
            }
            self.client.lock().unwrap().take();
        }
        self.stop.send_replace(true);
    }

    /// Runs `op` unless the session ends first (then fails with the
    /// reason), so no call waits past the end of its session.
    async fn until_ended<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let mut ended = self.ended.subscribe();
        tokio::select! {
            r = op => r,
            why = ended.wait_for(Option::is_some) => {
                Err(why.ok().and_then(|w| *w).map_or(ClusterError::Stopped, ended_error))
            }
        }
    }

    /// Retries `op` across connection losses (for idempotent operations).
    async fn retry<T, F, Fut>(&self, mut op: F) -> std::result::Result<T, zk::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, zk::Error>>,
    {
        loop {
            match op().await {
                Err(zk::Error::ConnectionLoss) => match self.ended() {
                    Some(Ended::Lost) => return Err(zk::Error::SessionExpired),
                    Some(Ended::Left) => return Err(zk::Error::ClientClosed),
                    None => tokio::time::sleep(RETRY).await,
                },
                r => return r,
            }
        }
    }

    /// Tracks membership and forwards one entry; false once nobody listens.
    fn deliver(&self, tx: &mpsc::UnboundedSender<Delivered>, seq: u64, data: &[u8]) -> bool {
        let Some((time, event)) = Event::decode(data) else {
            tracing::warn!("skipping malformed event {seq} in {}", self.queue);
            return true;
        };
        match &event {
            Event::Join {
                node, incarnation, ..
            } => {
                self.tracked.lock().unwrap().insert(*incarnation, node.nid);
                self.joined.notify_one();
            }
            Event::Leave { incarnation, .. } => {
                self.tracked.lock().unwrap().remove(incarnation);
            }
            _ => {}
        }
        tx.send(Delivered { seq, time, event }).is_ok()
    }
}

/// Errors after which a session is unusable.
fn fatal(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::SessionExpired
            | zk::Error::ClientClosed
            | zk::Error::AuthFailed
            | zk::Error::NoHosts
    )
}

fn entry_path(queue: &str, sequence: i64) -> String {
    format!("{queue}/{sequence:010}")
}

/// The ZooKeeper cluster driver of one sheep. See the module docs for the
/// design; the methods have the same semantics as [`crate::LocalDriver`]'s.
pub struct ZkDriver {
    opts: ZkOptions,
    paths: Paths,
    session: Mutex<Option<Arc<Session>>>,
    /// Whether ZooKeeper has answered recently enough (see [`watch_session`]).
    contact: Arc<watch::Sender<bool>>,
}

/// Holds the cluster-wide exclusive section until dropped (or until the
/// holder's session ends).
pub struct ZkBlockGuard {
    lock: Option<zk::OwnedLockClient>,
    /// The lock node is deleted by a task; dropping outside the runtime
    /// still needs one to spawn it on.
    runtime: tokio::runtime::Handle,
}

impl Drop for ZkBlockGuard {
    fn drop(&mut self) {
        let _rt = self.runtime.enter();
        self.lock.take();
    }
}

impl ZkDriver {
    /// A driver for `opts`; nothing is contacted until [`ZkDriver::join`].
    pub fn new(opts: ZkOptions) -> ZkDriver {
        let paths = Paths { base: opts.base() };
        ZkDriver {
            opts,
            paths,
            session: Mutex::new(None),
            contact: Arc::new(watch::Sender::new(true)),
        }
    }

    /// Whether this member may trust its view to be current: false while
    /// ZooKeeper has not answered for about two thirds of the session
    /// timeout (the ensemble may expire the session, and the others move
    /// on without us, at any time after a whole timeout), true again once
    /// it answers.
    pub fn contact(&self) -> watch::Receiver<bool> {
        self.contact.subscribe()
    }

    /// The options this driver was built with.
    pub fn options(&self) -> &ZkOptions {
        &self.opts
    }

    fn session(&self) -> Result<Arc<Session>> {
        self.session
            .lock()
            .unwrap()
            .clone()
            .ok_or(ClusterError::Stopped)
    }

    /// The local address the route to the first resolvable ensemble member
    /// starts from (no packet is sent).
    pub fn local_addr(&self) -> std::io::Result<IpAddr> {
        use std::net::{ToSocketAddrs, UdpSocket};
        let mut last = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no zookeeper server address resolves",
        );
        for server in &self.opts.servers {
            let addrs = match server.to_socket_addrs() {
                Ok(a) => a,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            for a in addrs {
                let any = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                match UdpSocket::bind(any).and_then(|u| {
                    u.connect(a)?;
                    u.local_addr()
                }) {
                    Ok(l) => return Ok(l.ip()),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// Connects, joins (resetting the stream if no member is alive) and
    /// starts delivering every event of the stream from its beginning,
    /// including our own JOIN. Call once per driver.
    pub async fn join(
        self: &Arc<Self>,
        node: SdNode,
        opaque: Vec<u8>,
    ) -> Result<mpsc::UnboundedReceiver<Delivered>> {
        if self.session.lock().unwrap().is_some() {
            return Err(ClusterError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the zookeeper driver has already joined",
            )));
        }
        let client = zk::Client::connector()
            .with_session_timeout(self.opts.timeout)
            .connect(&self.opts.servers.join(","))
            .await?;
        let incarnation = client.session_id().0 as u64;
        let p = &self.paths;
        for dir in [p.members(), p.queues(), p.lefts()] {
            client.mkdir(&dir, &PERSISTENT).await?;
        }
        let (gen, reset) = {
            let dir = p.join_lock();
            let _lock = client
                .lock(
                    zk::LockPrefix::new_curator(&dir, "join-")?,
                    &[],
                    zk::LockOptions::new(zk::Acls::anyone_all())
                        .with_ancestor_options(PERSISTENT)?,
                )
                .await?;
            let alive = client.list_children(&p.members()).await?;
            let newest = client
                .list_children(&p.queues())
                .await?
                .iter()
                .filter_map(|g| g.parse::<i64>().ok())
                .max();
            let (gen, reset) = match newest {
                Some(g) if !alive.is_empty() => (g, false),
                _ => {
                    let (_, g) = client
                        .create(&format!("{}/", p.queues()), &[], &PERSISTENT_SEQ)
                        .await?;
                    tracing::info!(
                        "no live member in {}: starting stream generation {g}",
                        p.base
                    );
                    (g.into_i64(), true)
                }
            };
            client
                .mkdir(&format!("{}/{gen:010}", p.lefts()), &PERSISTENT)
                .await?;
            client
                .create(&p.member(incarnation), &node.encode(), &EPHEMERAL)
                .await?;
            let join = Event::Join {
                node,
                incarnation,
                opaque,
            }
            .encode(now_secs());
            client
                .create(
                    &format!("{}/{gen:010}/", p.queues()),
                    &join,
                    &PERSISTENT_SEQ,
                )
                .await?;
            (gen, reset)
        };
        let session = Arc::new(Session {
            client: Mutex::new(Some(client.clone())),
            ended: watch::Sender::new(None),
            queue: format!("{}/{gen:010}", p.queues()),
            left: format!("{}/{gen:010}", p.lefts()),
            members: p.members(),
            me: node.nid,
            incarnation,
            stop: watch::Sender::new(false),
            tracked: Mutex::new(HashMap::new()),
            joined: Notify::new(),
        });
        *self.session.lock().unwrap() = Some(session.clone());
        tracing::info!(
            "joined {} as incarnation {incarnation:#x} (stream generation {gen})",
            p.base
        );
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(read_stream(session.clone(), client.clone(), tx));
        tokio::spawn(watch_members(session.clone(), client.clone()));
        tokio::spawn(watch_session(session.clone(), client.clone()));
        tokio::spawn(keep_contact(session, client.clone(), self.contact.clone()));
        if reset {
            tokio::spawn(collect_generations(client, p.clone(), gen));
        }
        Ok(rx)
    }

    async fn append(&self, event: Event) -> Result<u64> {
        let s = self.session()?;
        let client = s.client()?;
        s.until_ended(async {
            let (_, sequence) = client
                .create(
                    &format!("{}/", s.queue),
                    &event.encode(now_secs()),
                    &PERSISTENT_SEQ,
                )
                .await?;
            Ok(sequence.into_i64() as u64 + 1)
        })
        .await
    }

    /// Broadcasts `msg` in total order; returns its stream position.
    pub async fn notify(&self, msg: Vec<u8>) -> Result<u64> {
        let sender = self.session()?.me;
        self.append(Event::Notify { sender, msg }).await
    }

    /// Broadcasts a changed node record.
    pub async fn update_node(&self, node: SdNode) -> Result<u64> {
        self.append(Event::UpdateNode { node }).await
    }

    /// Enters the cluster-wide exclusive section (a ZooKeeper lock recipe:
    /// ephemeral sequential znodes, so a dead holder's lock vanishes with
    /// its session).
    pub async fn block(&self) -> Result<ZkBlockGuard> {
        let s = self.session()?;
        let client = s.client()?;
        let dir = self.paths.block_lock();
        let lock = s
            .until_ended(async {
                let lock = client
                    .lock(
                        zk::LockPrefix::new_curator(&dir, "block-")?,
                        &[],
                        zk::LockOptions::new(zk::Acls::anyone_all())
                            .with_ancestor_options(PERSISTENT)?,
                    )
                    .await?;
                Ok(lock.into_owned())
            })
            .await?;
        Ok(ZkBlockGuard {
            lock: Some(lock),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The current end of the stream: once a member has applied events up
    /// to here it has seen everything appended before this call (a `sync`
    /// with the leader, then the queue's child count).
    pub async fn stream_end(&self) -> Result<u64> {
        let s = self.session()?;
        let client = s.client()?;
        s.until_ended(async {
            s.retry(|| client.sync(&s.queue)).await?;
            let stat = s
                .retry(|| client.check_stat(&s.queue))
                .await?
                .ok_or(ClusterError::SessionExpired)?;
            // Entries are never deleted from a live generation, so the
            // child version counts the creations: the last entry's seq.
            Ok(stat.cversion as u64)
        })
        .await
    }

    /// Leaves cleanly: appends our LEAVE, stops the stream and closes the
    /// session (which deletes our member znode and any locks).
    pub async fn leave(&self) -> Result<()> {
        let Ok(s) = self.session() else {
            return Ok(());
        };
        let client = match s.client() {
            Ok(c) => c,
            Err(ClusterError::Stopped) => return Ok(()),
            Err(e) => return Err(e),
        };
        let r = s
            .until_ended(async { Ok(append_leave(&s, &client, s.me, s.incarnation).await?) })
            .await;
        s.end(Ended::Left);
        r
    }

    /// Our incarnation id (the ZooKeeper session id), once joined.
    pub fn incarnation(&self) -> Option<u64> {
        self.session.lock().unwrap().as_ref().map(|s| s.incarnation)
    }
}

/// Appends the LEAVE of `incarnation` unless one is already in this
/// generation (the marker and the entry are created atomically).
async fn append_leave(
    s: &Session,
    client: &zk::Client,
    nid: NodeId,
    incarnation: u64,
) -> std::result::Result<(), zk::Error> {
    let data = Event::Leave { nid, incarnation }.encode(now_secs());
    let marker = format!("{}/{incarnation:016x}", s.left);
    let entry = format!("{}/", s.queue);
    let r = s
        .retry(|| {
            let mut w = client.new_multi_writer();
            let built = w
                .add_create(&marker, &[], &PERSISTENT)
                .and_then(|()| w.add_create(&entry, &data, &PERSISTENT_SEQ));
            let commit = w.commit();
            async move {
                built?;
                commit.await.map(|_| ()).map_err(|e| match e {
                    zk::MultiWriteError::OperationFailed {
                        index: 0,
                        source: zk::Error::NodeExists,
                    } => zk::Error::NodeExists,
                    e => e.into(),
                })
            }
        })
        .await;
    match r {
        // Someone (or our own attempt before a connection loss) did it.
        Err(zk::Error::NodeExists) => Ok(()),
        r => r,
    }
}

/// Outcome of one read of the next queue entry.
enum Next {
    /// Delivered what was asked for (or some of it).
    Got,
    /// The next entry does not exist yet.
    Missing,
    /// Stop reading (the session ended or nobody listens).
    Stop,
}

/// Reads the generation's queue in order and delivers it; closes the
/// channel (by returning) when the session ends or the receiver is gone.
async fn read_stream(s: Arc<Session>, client: zk::Client, tx: mpsc::UnboundedSender<Delivered>) {
    let mut stop = s.stop.subscribe();
    tokio::select! {
        _ = read_entries(&s, &client, &tx) => {}
        _ = stop.wait_for(|v| *v) => {}
        _ = tx.closed() => {}
    }
    // Stop the other tasks too (a no-op if the session already ended).
    s.stop.send_replace(true);
}

/// The reader's loop; returns when it cannot go on.
async fn read_entries(s: &Session, client: &zk::Client, tx: &mpsc::UnboundedSender<Delivered>) {
    let mut next: i64 = 0;
    let mut batch = 1usize;
    loop {
        // Catch up: request a batch of entries at once (pipelined).
        let paths: Vec<String> = (0..batch as i64)
            .map(|i| entry_path(&s.queue, next + i))
            .collect();
        let reads: Vec<_> = paths.iter().map(|p| client.get_data(p)).collect();
        let mut got = 0;
        let mut outcome = Next::Got;
        for r in reads {
            match r.await {
                Ok((data, _)) => {
                    if !s.deliver(tx, next as u64 + 1, &data) {
                        return;
                    }
                    next += 1;
                    got += 1;
                }
                Err(zk::Error::NoNode) => {
                    outcome = Next::Missing;
                    break;
                }
                Err(e) => {
                    outcome = on_error(s, e).await;
                    break;
                }
            }
        }
        match outcome {
            Next::Stop => return,
            Next::Got if got == batch => {
                batch = (batch * 2).min(MAX_BATCH);
                continue;
            }
            Next::Got => {
                batch = 1;
                continue;
            }
            Next::Missing => batch = 1,
        }
        // Caught up: wait for entry `next` to appear.
        let path = entry_path(&s.queue, next);
        let watcher = match client.check_and_watch_stat(&path).await {
            Ok((Some(_), _)) => continue,
            Ok((None, w)) => w,
            Err(e) => match on_error(s, e).await {
                Next::Stop => return,
                _ => continue,
            },
        };
        // A sequence number that was assigned but has no entry (never
        // expected) would stall the stream: skip it.
        match client.check_stat(&s.queue).await {
            Ok(Some(st)) if i64::from(st.cversion) > next => {
                match client.get_data(&path).await {
                    Ok((data, _)) => {
                        if !s.deliver(tx, next as u64 + 1, &data) {
                            return;
                        }
                    }
                    Err(zk::Error::NoNode) => {
                        tracing::warn!("queue entry {path} is missing; skipping it");
                    }
                    Err(e) => match on_error(s, e).await {
                        Next::Stop => return,
                        _ => continue,
                    },
                }
                next += 1;
                continue;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                // Our generation was collected: a reset happened without us.
                s.end(Ended::Lost);
                return;
            }
            Err(e) => match on_error(s, e).await {
                Next::Stop => return,
                _ => continue,
            },
        }
        watcher.changed().await;
    }
}

/// Handles a failed read: ends the session on fatal errors, else pauses.
async fn on_error(s: &Session, e: zk::Error) -> Next {
    if fatal(&e) {
        s.end(Ended::Lost);
        return Next::Stop;
    }
    if s.ended().is_some() {
        return Next::Stop;
    }
    if !matches!(e, zk::Error::ConnectionLoss) {
        tracing::warn!("reading the cluster stream: {e}");
    }
    tokio::time::sleep(RETRY).await;
    Next::Missing
}

/// Watches `B/member` and appends a LEAVE for every member of the stream
/// whose znode is gone.
async fn watch_members(s: Arc<Session>, client: zk::Client) {
    let mut stop = s.stop.subscribe();
    tokio::select! {
        _ = check_members(&s, &client) => {}
        _ = stop.wait_for(|v| *v) => {}
    }
}

/// The liveness loop; returns when the session is unusable.
async fn check_members(s: &Session, client: &zk::Client) {
    let mut reported: HashSet<u64> = HashSet::new();
    loop {
        // Snapshot the stream's members *before* listing the znodes: a
        // member whose JOIN we have read had its znode before the JOIN.
        let known: Vec<(u64, NodeId)> = s
            .tracked
            .lock()
            .unwrap()
            .iter()
            .map(|(&i, &n)| (i, n))
            .collect();
        let (children, watcher) = match client.list_and_watch_children(&s.members).await {
            Ok(r) => r,
            Err(e) if fatal(&e) => return,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let alive: HashSet<u64> = children
            .iter()
            .filter_map(|c| u64::from_str_radix(c, 16).ok())
            .collect();
        reported.retain(|i| known.iter().any(|k| k.0 == *i));
        let mut failed = false;
        for (inc, nid) in known {
            if inc == s.incarnation || alive.contains(&inc) || !reported.insert(inc) {
                continue;
            }
            tracing::info!(
                "member {} (incarnation {inc:#x}) is gone",
                nid.to_addr_string()
            );
            if let Err(e) = append_leave(s, client, nid, inc).await {
                if fatal(&e) {
                    return;
                }
                tracing::warn!("appending the LEAVE of {inc:#x}: {e}");
                reported.remove(&inc);
                failed = true;
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        tokio::select! {
            _ = watcher.changed() => {}
            _ = s.joined.notified() => {}
        }
    }
}

/// Ends the session when ZooKeeper says it expired, or when it has been
/// unreachable for about a session timeout `T` since the last reply (the
/// ensemble expires it then; the client cannot learn that until it
/// reconnects). The client declares a connection lost after `2/5 T` of
/// silence (`zookeeper-client`'s default), so giving up `3/5 T` after
/// `Disconnected` stops this node about when the others drop it (earlier,
/// never later, when the connection broke at once).
async fn watch_session(s: Arc<Session>, client: zk::Client) {
    let give_up_after = client.session_timeout() * 3 / 5;
    let mut states = client.state_watcher();
    let mut stop = s.stop.subscribe();
    let mut deadline: Option<Instant> = None;
    loop {
        let give_up = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            state = states.changed() => match state {
                zk::SessionState::Disconnected => {
                    tracing::warn!("zookeeper connection lost; reconnecting");
                    deadline.get_or_insert(Instant::now() + give_up_after);
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    deadline = None;
                }
                zk::SessionState::Expired
                | zk::SessionState::Closed
                | zk::SessionState::AuthFailed => {
                    s.end(Ended::Lost);
                    return;
                }
            },
            _ = give_up => {
                tracing::error!("zookeeper unreachable for {give_up_after:?} after a connection loss");
                s.end(Ended::Lost);
                return;
            }
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

/// Keeps [`ZkDriver::contact`]: a cheap read every `T/10` tells when
/// ZooKeeper last answered (taken as when the request was sent, the
/// earliest the ensemble can have heard from us); contact is lost once
/// that is `2/3 T` ago, well before the ensemble may expire the session
/// (`T` after it last heard from us), and back with the next answer.
async fn keep_contact(s: Arc<Session>, client: zk::Client, contact: Arc<watch::Sender<bool>>) {
    let t = client.session_timeout();
    let lost_after = t * 2 / 3;
    let heard = Mutex::new(Instant::now());
    let probe = async {
        loop {
            let sent = Instant::now();
            if let Ok(Ok(_)) = tokio::time::timeout(lost_after, client.check_stat(&s.members)).await
            {
                let mut h = heard.lock().unwrap();
                *h = (*h).max(sent);
            }
            tokio::time::sleep(t / 10).await;
        }
    };
    let judge = async {
        let mut tick = tokio::time::interval(t / 20);
        loop {
            tick.tick().await;
            let silent = heard.lock().unwrap().elapsed();
            let up = silent < lost_after;
            if contact.send_if_modified(|c| std::mem::replace(c, up) != up) && !up {
                tracing::warn!("no reply from zookeeper for {silent:?}");
            }
        }
    };
    let mut stop = s.stop.subscribe();
    tokio::select! {
        _ = probe => {}
        _ = judge => {}
        _ = stop.wait_for(|v| *v) => {}
    }
    contact.send_replace(false);
}

/// Deletes the generations older than `current` (queues and markers).
async fn collect_generations(client: zk::Client, paths: Paths, current: i64) {
    for root in [paths.queues(), paths.lefts()] {
        let Ok(gens) = client.list_children(&root).await else {
            continue;
        };
        for g in gens {
            if g.parse::<i64>().is_ok_and(|n| n < current) {
                let dir = format!("{root}/{g}");
                if let Err(e) = delete_tree(&client, &dir).await {
                    tracing::debug!("collecting {dir}: {e}");
                }
            }
        }
    }
}

/// Deletes `dir` and its children (which have none).
async fn delete_tree(client: &zk::Client, dir: &str) -> std::result::Result<(), zk::Error> {
    let children = match client.list_children(dir).await {
        Err(zk::Error::NoNode) => return Ok(()),
        r => r?,
    };
    for chunk in children.chunks(GC_CHUNK) {
        let paths: Vec<String> = chunk.iter().map(|c| format!("{dir}/{c}")).collect();
        let mut w = client.new_multi_writer();
        for p in &paths {
            w.add_delete(p, None)?;
        }
        if w.commit().await.is_err() {
            // Someone else collects too: delete what is left one by one.
            for p in &paths {
                match client.delete(p, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    match client.delete(dir, None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ZkOptions {
        ZkOptions::parse(s).unwrap_or_else(|e| panic!("'{s}' rejected: {e}"))
    }

    #[test]
    fn accepted_forms() {
        let o = parse("10.0.0.1:2181");
        assert_eq!(o.servers, ["10.0.0.1:2181"]);
        assert_eq!(o.cluster_id, None);
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);
        assert_eq!(o.base(), "/sheepdog");

        let o = parse("10.0.0.1:2181,10.0.0.2:2181,10.0.0.3:2181/prod,timeout=5000");
        assert_eq!(
            o.servers,
            ["10.0.0.1:2181", "10.0.0.2:2181", "10.0.0.3:2181"]
        );
        assert_eq!(o.cluster_id.as_deref(), Some("prod"));
        assert_eq!(o.timeout, Duration::from_millis(5000));
        assert_eq!(o.base(), "/prod");

        let o = parse("zk1.example.com:2181,zk-2:2182/a/b.c_d-e");
        assert_eq!(o.servers, ["zk1.example.com:2181", "zk-2:2182"]);
        assert_eq!(o.base(), "/a/b.c_d-e");
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);

        let o = parse("localhost:2181,timeout=1");
        assert_eq!(o.cluster_id, None);
        assert_eq!(o.timeout, Duration::from_millis(1));

        let o = parse("[::1]:2181,[fe80::1]:2182/c1");
        assert_eq!(o.servers, ["[::1]:2181", "[fe80::1]:2182"]);
        assert_eq!(o.base(), "/c1");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "h:1",
            "a:1,b:2/x/y,timeout=7",
            "[::1]:2181/c",
            "h:2181,timeout=30000",
        ] {
            let o = parse(s);
            assert_eq!(parse(&o.to_string()), o, "{s} -> {o}");
        }
        assert_eq!(parse("h:1/c").to_string(), "h:1/c,timeout=30000");
    }

    #[test]
    fn malformed_forms() {
        for (bad, why) in [
            ("", "You must specify zookeeper servers"),
            ("timeout=5000", "You must specify zookeeper servers"),
            ("host", "is not host:port"),
            ("host:", "invalid port"),
            (":2181", "invalid host"),
            ("host:0", "invalid port"),
            ("host:65536", "invalid port"),
            ("host:abc", "invalid port"),
            ("::1:2181", "invalid host"),
            ("[::1", "unclosed"),
            ("[nope]:2181", "invalid IPv6"),
            ("[::1]2181", "is not host:port"),
            ("h:1,,h:2", "empty zookeeper server"),
            ("h:1,", "empty zookeeper server"),
            ("h:1/", "invalid cluster id"),
            ("h:1/a//b", "invalid cluster id"),
            ("h:1/a/", "invalid cluster id"),
            ("h:1/..", "invalid cluster id"),
            ("h:1/zookeeper", "invalid cluster id"),
            ("h:1/with space", "invalid cluster id"),
            ("h:1/c,h:2", "the cluster id follows the last server"),
            ("h:1,timeout=", "invalid session timeout"),
            ("h:1,timeout=0", "invalid session timeout"),
            ("h:1,timeout=-5", "invalid session timeout"),
            ("h:1,timeout=5s", "invalid session timeout"),
            ("h:1,timeout=99999999999", "invalid session timeout"),
            ("h:1,timeout=5,timeout=6", "given twice"),
            ("h:1,timeout=5,h:2", "the timeout comes last"),
            ("h:1,timeout=5/c", "invalid session timeout"),
            ("h:1,foo=bar", "unknown zookeeper option"),
        ] {
            match ZkOptions::parse(bad) {
                Err(ClusterError::Option(msg)) => {
                    assert!(msg.contains(why), "'{bad}': '{msg}' lacks '{why}'");
                    assert!(msg.contains(DRIVER_SYNTAX), "'{bad}': '{msg}'");
                }
                r => panic!("'{bad}' gave {r:?}"),
            }
        }
    }
}
