//! The API's connections: the accept loop and the life of each connection,
//! run here rather than by `warp::serve` so that idle clients cannot exhaust
//! the agent's file descriptors. The routes are served by hyper's auto
//! builder (HTTP/1.1, and HTTP/2 with prior knowledge) as before; around it:
//!
//! - at most [`Limits::max_connections`] connections at once; at the cap, the
//!   connection idle the longest is closed to make room for the new one (a
//!   connection answering a request is never closed for it);
//! - a request head must arrive within [`Limits::header_read_timeout`] of
//!   the connection opening or of its first byte, and a connection with no
//!   request for [`Limits::idle_timeout`] is closed;
//! - descriptors are kept back for probes, history and maintenance: the cap
//!   never exceeds what the process's descriptor limit leaves after
//!   [`FD_RESERVE`], and an accept refused for want of descriptors closes an
//!   idle connection and pauses the loop instead of spinning;
//! - a client that drops its connection mid-request is logged at debug, at
//!   most once a second: how a client ends its connection must not decide
//!   what the agent's log holds.
//!
//! Called by `web::bind` and `web::serve`; `raise_fd_limit` by `App::start`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;

/// Descriptors the API never takes: probes, the history writer, maintenance
/// backups and the agent's own files live on them.
pub const FD_RESERVE: u64 = 128;

/// Descriptors one API connection may hold at once: its socket, and the
/// read-only history connection of a request (the file, its WAL and its
/// shared memory).
const FDS_PER_CONNECTION: u64 = 4;

/// How long the accept loop pauses after the process ran out of descriptors.
const OUT_OF_FDS_PAUSE: Duration = Duration::from_millis(100);

/// Connections the kernel completes before the agent takes them. A burst of
/// clients past a short queue has its SYNs dropped and waits a second for
/// each retry.
const BACKLOG: u32 = 1024;

/// The bounds of the API's connections, from `[api]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn new(api: &ApiConfig) -> Limits {
        Limits {
            max_connections: api.max_connections,
            header_read_timeout: api.header_read_timeout,
            idle_timeout: api.idle_timeout,
        }
    }

    /// The cap lowered to what `nofile` descriptors allow after the reserve;
    /// at least one connection, so that the API still answers.
    pub fn within_fds(self, nofile: u64) -> Limits {
        let fit = nofile.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION;
        Limits {
            max_connections: self.max_connections.min(fit.max(1) as usize),
            ..self
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new(&ApiConfig::default())
    }
}

/// Raises the soft limit on open files to the hard limit and returns the
/// soft limit now in force. The systemd unit forbids `setrlimit` (its
/// system-call filter) and sets `LimitNOFILE` instead; the raise then fails
/// and the unit's limit stands.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = fd_rlimit()?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit(2) reads a struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Some(lim.rlim_cur)
}

/// The soft limit on open files.
pub fn fd_limit() -> Option<u64> {
    fd_rlimit().map(|l| l.rlim_cur)
}

fn fd_rlimit() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into a struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// A listening socket on `addr` with room for a burst of connections.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted agent rebinds at once, even while
    // connections of the previous one are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `service` on `listener` until `shutdown` is cancelled, then lets
/// open requests finish.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = match fd_limit() {
        Some(n) => {
            let within = limits.within_fds(n);
            if within.max_connections < limits.max_connections {
                tracing::warn!(
                    "api.max_connections lowered from {} to {}: the open-file limit is {n}, \
                     and {FD_RESERVE} descriptors stay with probes and history",
                    limits.max_connections,
                    within.max_connections
                );
            }
            within
        }
        None => limits,
    };
    let registry = Arc::new(Registry::new(limits));
    let graceful = GracefulShutdown::new();
    let out_of_fds = Throttle::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The client gave up before we took its connection.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: make room
                // and wait rather than spin on the same error.
                if let Some(skipped) = out_of_fds.allow(&registry.epoch) {
                    tracing::warn!(
                        "api: cannot accept a connection: {e}; pausing ({skipped} more since the last report)"
                    );
                }
                registry.evict_oldest_idle();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(OUT_OF_FDS_PAUSE) => continue,
                }
            }
        };
        let Some(slot) = registry.clone().slot(&shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            slot,
            service.clone(),
            graceful.watcher(),
        ));
    }
    drop(listener);
    // Idle connections close now; the others once their answer is written.
    registry.close_idle();
    graceful.shutdown().await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, times out or is evicted.
async fn connection<S, B>(stream: TcpStream, slot: Slot, service: S, watcher: Watcher)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = slot.conn.clone();
    let limits = slot.registry.limits;
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
    });
    let tracked = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            let busy = conn.request_started();
            let answer = service.call(req);
            async move {
                let resp = answer.await?;
                // The connection stays busy until the body is written.
                Ok::<_, Infallible>(resp.map(|inner| Guarded { inner, _busy: busy }))
            }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let served = watcher.watch(builder.serve_connection(io, tracked));
    let registry = &slot.registry;
    tokio::select! {
        r = served => if let Err(e) = r {
            registry.quiet(format_args!("api: connection ended: {e}"));
        },
        why = conn.expired(&limits) => registry.quiet(format_args!("api: connection closed: {why}")),
        _ = conn.evict.cancelled() => {}
    }
}

/// Every open connection, and the slots that bound them.
struct Registry {
    limits: Limits,
    epoch: Instant,
    slots: Arc<Semaphore>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    debug: Throttle,
}

impl Registry {
    fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            epoch: Instant::now(),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            debug: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// A slot for a connection just accepted: free, or made free by closing
    /// the connection idle the longest. While every connection is answering
    /// a request, waits for one to finish or go idle. `None` on shutdown.
    async fn slot(self: Arc<Self>, shutdown: &CancellationToken) -> Option<Slot> {
        let permit = loop {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                break p;
            }
            self.evict_oldest_idle();
            tokio::select! {
                p = self.slots.clone().acquire_owned() => break p.ok()?,
                // A busy connection may have gone idle meanwhile.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.cancelled() => return None,
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(self.epoch));
        self.conns
            .lock()
            .expect("connections lock")
            .insert(id, conn.clone());
        Some(Slot {
            registry: self,
            id,
            conn,
            _permit: permit,
        })
    }

    /// Closes the connection idle the longest, unless one is closing
    /// already (its slot is about to be free).
    fn evict_oldest_idle(&self) {
        let conns = self.conns.lock().expect("connections lock");
        if conns.values().any(|c| c.evict.is_cancelled()) {
            return;
        }
        let oldest = conns
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(id, c)| (c.idle_since_ms.load(Ordering::Relaxed), **id));
        if let Some((_, c)) = oldest {
            c.evict.cancel();
        }
    }

    fn close_idle(&self) {
        for c in self.conns.lock().expect("connections lock").values() {
            if c.busy.load(Ordering::Relaxed) == 0 {
                c.evict.cancel();
            }
        }
    }

    /// A debug line, at most one a second, with how many were left out.
    fn quiet(&self, line: std::fmt::Arguments<'_>) {
        if let Some(skipped) = self.debug.allow(&self.epoch) {
            if skipped > 0 {
                tracing::debug!("{line} ({skipped} more not logged)");
            } else {
                tracing::debug!("{line}");
            }
        }
    }
}

/// A connection's place in the registry; freed when its task ends.
struct Slot {
    registry: Arc<Registry>,
    id: u64,
    conn: Arc<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry
            .conns
            .lock()
            .expect("connections lock")
            .remove(&self.id);
    }
}

/// What is known of one connection's activity, for its timers and for
/// eviction. Times are milliseconds since the registry's epoch.
struct Conn {
    epoch: Instant,
    /// Requests being answered (their response bodies not yet written).
    busy: AtomicU32,
    /// Since when no request has been in flight.
    idle_since_ms: AtomicU64,
    /// When the first byte of the next request head came ([`NONE`]: none yet).
    head_since_ms: AtomicU64,
    /// Rung when the deadline may have moved.
    wake: Notify,
    /// Cancelled to close the connection and free its slot.
    evict: CancellationToken,
}

const NONE: u64 = u64::MAX;

impl Conn {
    fn new(epoch: Instant) -> Conn {
        let now = ms_since(&epoch);
        Conn {
            epoch,
            busy: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(now),
            // The head of the first request is due from the moment of accept:
            // a client that connects and sends nothing is a slow head too.
            head_since_ms: AtomicU64::new(now),
            wake: Notify::new(),
            evict: CancellationToken::new(),
        }
    }

    fn now(&self) -> u64 {
        ms_since(&self.epoch)
    }

    fn request_started(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(NONE, Ordering::Relaxed);
        self.wake.notify_one();
        Busy(self.clone())
    }

    /// Bytes came in: while idle, they start the next request's head.
    fn bytes_read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0
            && self
                .head_since_ms
                .compare_exchange(NONE, self.now(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// When the connection is to be closed and why; `None` while busy.
    fn deadline(&self, limits: &Limits) -> Option<(u64, &'static str)> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let idle = (
            self.idle_since_ms.load(Ordering::Relaxed) + limits.idle_timeout.as_millis() as u64,
            "idle for api.idle_timeout",
        );
        let head = self.head_since_ms.load(Ordering::Relaxed);
        if head == NONE {
            return Some(idle);
        }
        let head = (
            head + limits.header_read_timeout.as_millis() as u64,
            "no request head within api.header_read_timeout",
        );
        Some(if head.0 <= idle.0 { head } else { idle })
    }

    /// Resolves once the connection has outstayed its deadline.
    async fn expired(&self, limits: &Limits) -> &'static str {
        loop {
            let wake = self.wake.notified();
            match self.deadline(limits) {
                None => wake.await,
                Some((at, why)) => {
                    let now = self.now();
                    if now >= at {
                        return why;
                    }
                    tokio::select! {
                        _ = wake => {}
                        _ = tokio::time::sleep(Duration::from_millis(at - now)) => {}
                    }
                }
            }
        }
    }
}

fn ms_since(epoch: &Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Held while a request is answered; its drop makes the connection idle.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        let c = &self.0;
        if c.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            c.idle_since_ms.store(c.now(), Ordering::Relaxed);
            c.wake.notify_one();
        }
    }
}

/// A response body that keeps its connection busy until it is written.
struct Guarded<B> {
    inner: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes arrive.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Lets one log line through per `every`, counting those held back.
struct Throttle {
    every_ms: u64,
    next_ms: AtomicU64,
    skipped: AtomicU64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may go out.
    fn allow(&self, epoch: &Instant) -> Option<u64> {
        let now = ms_since(epoch);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.skipped.swap(0, Ordering::Relaxed))
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_to_probes_and_history() {
        let l = Limits::default();
        assert_eq!(l.max_connections, 256);
        assert_eq!(l.within_fds(8192).max_connections, 256);
        // 1024 descriptors: (1024 - 128) / 4 = 224 connections.
        assert_eq!(l.within_fds(1024).max_connections, 224);
        assert_eq!(l.within_fds(64).max_connections, 1);
    }

    #[test]
    fn a_slow_head_is_due_before_the_idle_timeout() {
        let limits = Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        };
        let c = Arc::new(Conn::new(Instant::now()));
        let (at, why) = c.deadline(&limits).unwrap();
        assert!(at <= 10_000 + c.now() && why.contains("header_read_timeout"));
        let busy = c.request_started();
        assert_eq!(c.deadline(&limits), None);
        drop(busy);
        let (at, why) = c.deadline(&limits).unwrap();
        assert!(at >= 30_000 && why.contains("idle_timeout"), "{at} {why}");
        c.bytes_read();
        let (_, why) = c.deadline(&limits).unwrap();
        assert!(why.contains("header_read_timeout"));
    }

    #[test]
    fn the_throttle_lets_one_line_a_period_through_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(3600));
        let epoch = Instant::now();
        assert_eq!(t.allow(&epoch), Some(0));
        assert_eq!(t.allow(&epoch), None);
        assert_eq!(t.allow(&epoch), None);
        t.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(t.allow(&epoch), Some(2));
    }
}
