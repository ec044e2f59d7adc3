//! The HTTP server: an accept loop over hyper that serves the API's axum `Router` with
//! the limits a service open to the network needs, so that clients which connect and
//! then send nothing, half a request or half a body, sit idle, or read their answers
//! slowly cannot hold the service's connections for ever.
//!
//! - **A cap on connections** ([`HttpLimits::max_connections`]): at the cap the loop
//!   accepts one more client and holds it, unserved, while it makes room: it closes the
//!   connection idle the longest (no request in flight), or waits for one to close or
//!   go idle. Further clients wait in the kernel's listen queue. Idle keep-alive
//!   connections therefore never keep a new client out, however many there are: each
//!   is cheap for its client to open again, and HTTP clients retry a request sent on a
//!   connection that the server closed while it was idle. [`fit_to_descriptors`] raises
//!   the open-files limit and lowers the cap to what it allows, keeping
//!   [`RESERVED_DESCRIPTORS`] for everything else (the held client among them).
//! - **Timeouts per connection**, each counted from a fixed moment, so that a client
//!   trickling bytes gains nothing: the request head must arrive within
//!   [`HttpLimits::header_timeout`] of the connection (or of its first byte after a
//!   pause); a connection with no request in flight, or whose client leaves its answer
//!   unread, is closed after [`HttpLimits::idle_timeout`]; a request body must arrive
//!   within [`HttpLimits::body_timeout`] of its head, else the answer is 408 and the
//!   connection is closed; and an answer must be taken whole within
//!   [`HttpLimits::answer_timeout`] of its being ready, else the connection is closed
//!   mid-answer.
//! - **Accept errors** (EMFILE, ENFILE, ENOBUFS, ...) pause the loop briefly, with
//!   backoff, and are logged once per burst; they never stop the server.
//! - **Graceful shutdown**: on the stop signal the loop stops accepting, idle
//!   connections close, and requests in flight are answered (the caller bounds the wait;
//!   an aborted server aborts its connections).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::error::ApiError;

/// How many HTTP connections the service holds at once, and for how long
/// (`gantry-service serve --max-connections`, `--http-*-timeout-s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The most connections served at once (1024 by default), so that clients cannot
    /// take the descriptors the database and the broker need. At the cap, one more
    /// client is held while the connection idle the longest is closed to make room for
    /// it; further clients wait in the kernel's listen queue.
    pub max_connections: usize,
    /// How long a client has to send a whole request head, from connecting or from its
    /// first byte after a pause (10 s by default): a client that sends nothing, or a
    /// few bytes at a time, is disconnected.
    pub header_timeout: Duration,
    /// How long a connection may sit with no request in flight, or with its answer
    /// unread by the client, before it is closed (60 s by default).
    pub idle_timeout: Duration,
    /// How long a request body has to arrive whole, from the end of its head (120 s by
    /// default, so that a 64 MiB body needs about 4.5 Mbit/s); a slower one is answered
    /// 408 and its connection closed.
    pub body_timeout: Duration,
    /// How long the client has to take one whole answer, from the moment it is ready
    /// (300 s by default, so that a 10 MiB result needs about 280 kbit/s); a client
    /// still reading it then is disconnected mid-answer. An overall deadline rather
    /// than a minimum rate: bytes the kernels buffer would count as progress, and a
    /// reader that takes a byte now and then would hold its connection for as long as
    /// the answer's size allows.
    pub answer_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(120),
            answer_timeout: Duration::from_secs(300),
        }
    }
}

/// Descriptors kept for everything but HTTP connections when the cap is fitted to the
/// open-files limit: the database (up to 16 connections, and SQLite's files), the
/// broker's connections, the management API's, the listener, standard streams and the
/// runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft open-files limit (`RLIMIT_NOFILE`) to the hard one and returns the
/// limit in force: the soft limit is often 1024 where the hard one allows far more,
/// and every connection is a descriptor.
pub fn raise_descriptor_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// The connections to serve at once: `requested`, lowered so that they and
/// [`RESERVED_DESCRIPTORS`] fit in `descriptor_limit`, and at least one.
pub fn connection_cap(requested: usize, descriptor_limit: u64) -> usize {
    let room = descriptor_limit.saturating_sub(RESERVED_DESCRIPTORS);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    requested.min(room).clamp(1, Semaphore::MAX_PERMITS)
}

/// `limits` with the connection cap the descriptors allow, after raising their limit
/// ([`raise_descriptor_limit`], [`connection_cap`]); logs the cap in force, and warns
/// when it is lower than asked.
pub fn fit_to_descriptors(limits: HttpLimits) -> HttpLimits {
    let descriptor_limit = match raise_descriptor_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-files limit; assuming 1024");
            1024
        }
    };
    let max_connections = connection_cap(limits.max_connections, descriptor_limit);
    if max_connections < limits.max_connections {
        tracing::warn!(
            requested = limits.max_connections,
            max_connections,
            descriptor_limit,
            reserved = RESERVED_DESCRIPTORS,
            "--max-connections lowered to what the open-files limit allows; raise the hard \
             limit (ulimit -Hn, systemd's LimitNOFILE=) to serve more connections at once"
        );
    } else {
        tracing::info!(
            max_connections,
            descriptor_limit,
            "HTTP connections capped at max_connections at once"
        );
    }
    HttpLimits {
        max_connections,
        ..limits
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` turns true (or its
/// sender is dropped), then stops accepting and waits for the open connections: idle
/// ones close at once, requests in flight are answered first. Never fails: an accept
/// error pauses the loop and is retried.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let open = OpenConnections::default();
    let mut connections = JoinSet::new();
    let mut failures = AcceptFailures::default();
    loop {
        while let Some(ended) = connections.try_join_next() {
            log_ended(ended);
        }
        // At the cap the loop accepts all the same, and then makes room for the client.
        let free = slots.clone().try_acquire_owned().ok();
        let accepted = tokio::select! {
            () = stop_requested(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                failures.succeeded();
                let slot = match free {
                    Some(slot) => slot,
                    None => tokio::select! {
                        () = stop_requested(&mut shutdown) => break,
                        slot = make_room(&slots, &open) => match slot {
                            Some(slot) => slot,
                            None => break, // never: the semaphore is not closed
                        },
                    },
                };
                connections.spawn(serve_connection(
                    stream,
                    app.clone(),
                    limits,
                    open.add(),
                    slot,
                    shutdown.clone(),
                ));
            }
            // That one client's connection failed before it was accepted.
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "a connection failed before it was accepted");
            }
            Err(error) => {
                drop(free);
                let pause = failures.failed(&error);
                tokio::select! {
                    () = stop_requested(&mut shutdown) => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    drop(listener);
    while let Some(ended) = connections.join_next().await {
        log_ended(ended);
    }
}

/// A slot for a client accepted at the cap: closes the connection idle the longest,
/// and again each time one goes idle, until a slot is free. `None` only if the
/// semaphore were closed, which it never is.
async fn make_room(slots: &Arc<Semaphore>, open: &OpenConnections) -> Option<OwnedSemaphorePermit> {
    loop {
        // Listening before looking, so that a connection going idle in between is seen.
        let became_idle = open.became_idle.notified();
        tokio::pin!(became_idle);
        became_idle.as_mut().enable();
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        open.close_longest_idle();
        tokio::select! {
            slot = slots.clone().acquire_owned() => return slot.ok(),
            () = became_idle => {}
        }
    }
}

/// The open connections' [`Activity`], for [`make_room`] to find the one idle the
/// longest; and the signal that one went idle.
#[derive(Debug, Default)]
struct OpenConnections {
    activities: Mutex<Vec<Weak<Activity>>>,
    /// Notified (waiters only) when a connection's last request in flight ends.
    became_idle: Arc<Notify>,
}

impl OpenConnections {
    /// The activity of a new connection, listed. Ended connections are dropped from the
    /// list whenever it is full, before it grows: the list stays within about twice the
    /// connections open, at a cost per connection that does not grow with them.
    fn add(&self) -> Arc<Activity> {
        let activity = Arc::new(Activity::new(self.became_idle.clone()));
        let mut activities = lock(&self.activities);
        if activities.len() == activities.capacity() {
            activities.retain(|listed| listed.strong_count() > 0);
        }
        activities.push(Arc::downgrade(&activity));
        activity
    }

    /// Asks the connection idle the longest, if any, to close.
    fn close_longest_idle(&self) {
        let activities = lock(&self.activities);
        let longest = activities
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|activity| Some((activity.idle_since()?, activity)))
            .min_by_key(|(since, _)| *since);
        if let Some((_, activity)) = longest {
            activity.ask_to_close();
        }
    }
}

/// Locks `mutex`, whose data stays consistent even if a holder panicked (every change
/// under these locks is a single assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn log_ended(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        tracing::error!(%error, "an HTTP connection's task panicked");
    }
}

/// Errors of one client's connection, not of the listener: accepting goes on at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A burst of failed accepts: the first is logged, the next ones only counted, and each
/// pauses the loop a little longer (10 ms, doubling to 1 s), so that a process out of
/// descriptors neither spins nor floods its log while connections close.
#[derive(Debug, Default)]
struct AcceptFailures {
    count: u32,
}

impl AcceptFailures {
    /// The first pause of a burst; it doubles with each failure up to [`Self::MAX_PAUSE`].
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    /// The longest pause between tries.
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    /// Counts a failure (logging the first of a burst); how long to pause.
    fn failed(&mut self, error: &io::Error) -> Duration {
        if self.count == 0 {
            tracing::warn!(
                %error,
                "cannot accept connections; pausing and retrying (further failures are not \
                 logged until one succeeds; if the open-files limit is reached, lower \
                 --max-connections or raise the limit)"
            );
        }
        self.count = self.count.saturating_add(1);
        Self::FIRST_PAUSE
            .saturating_mul(1 << (self.count - 1).min(7))
            .min(Self::MAX_PAUSE)
    }

    /// Ends a burst (logging how long it was).
    fn succeeded(&mut self) {
        if self.count > 0 {
            tracing::info!(failures = self.count, "accepting connections again");
            self.count = 0;
        }
    }
}

/// Serves one connection until it ends, times out, or (after the stop signal, or when
/// asked to make room) has answered what it had in hand. `_slot` is its place under the
/// cap, given back when it ends.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: HttpLimits,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request| {
            answer(app.clone(), activity.clone(), limits.body_timeout, request)
        })
    };
    // The header timeout is kept here, with the others: hyper's own runs again between
    // requests, which would make it the idle timeout too.
    let connection = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        if !closing && activity.asked_to_close() {
            tracing::debug!("closing an idle HTTP connection to make room for a new client");
            closing = true;
            connection.as_mut().graceful_shutdown();
        }
        let deadline = activity.deadline(&limits);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "an HTTP connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                if activity.deadline(&limits).is_some_and(|due| due <= Instant::now()) {
                    tracing::debug!("closing an HTTP connection that timed out");
                    return;
                }
            }
            () = stop_requested(&mut shutdown), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One request: its body bounded by `body_timeout`, answered by `app`; a body that did
/// not arrive in time is answered 408 and closes the connection.
async fn answer(
    app: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
    request: Request<Incoming>,
) -> Result<Response<Tracked>, Infallible> {
    let in_flight = InFlight::start(activity);
    let timed_out = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            body,
            due: Instant::now() + body_timeout,
            sleep: None,
            timeout: body_timeout,
            timed_out: timed_out.clone(),
        })
    });
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    in_flight.answering();
    let response = if timed_out.load(Ordering::Acquire) {
        body_too_slow(body_timeout)
    } else {
        response
    };
    Ok(response.map(|body| Tracked {
        body,
        rest: Bytes::new(),
        _in_flight: in_flight,
    }))
}

/// The 408 for a body that did not arrive within `timeout`; it closes the connection,
/// whose remaining bytes no longer make sense.
fn body_too_slow(timeout: Duration) -> Response<Body> {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "REQUEST_TIMEOUT",
        format!(
            "the request body did not arrive within {} s of its headers; send it again \
             (over a faster link), or ask the service's administrator to raise \
             --http-body-timeout-s",
            timeout.as_secs()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The error a request body yields once its deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTooSlow(Duration);

/// A request body that fails with [`BodyTooSlow`] when it has not ended by `due`, and
/// says so through `timed_out`.
struct DeadlineBody {
    body: Incoming,
    due: Instant,
    /// Made at the first wait, so that a body that is there at once costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    timed_out: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(axum::BoxError::from)));
        }
        let due = this.due;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyTooSlow(this.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that marks its request finished when hyper drops it (written, or
/// the connection gone), handing hyper its data in pieces of at most [`Self::PIECE`].
/// Hyper queues each piece whole, takes the next only when its buffer has room, and
/// drops the body after the last: in pieces, the answer stays in flight (and under
/// [`HttpLimits::answer_timeout`]) until all but a few hundred KiB of it have gone to
/// the socket, where a one-piece answer (a JSON document) would be done at once.
struct Tracked {
    body: Body,
    /// What is left of the data frame last taken from `body`.
    rest: Bytes,
    _in_flight: InFlight,
}

impl Tracked {
    /// The largest piece handed to hyper at once.
    const PIECE: usize = 64 * 1024;
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                ended_or_failed => return Poll::Ready(ended_or_failed),
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(Self::PIECE));
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.len() as u64;
        let body = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(body.lower().saturating_add(rest));
        if let Some(upper) = body.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// What a connection is doing, which decides its deadline (see [`Phase::deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a whole request head since `since`: the connection's start, or the
    /// first byte after an idle pause.
    Head { since: Instant },
    /// A request's handler runs (its body bounded by the body timeout).
    Handling,
    /// The answer has been handed to the socket since `since` (see [`Tracked`]); the
    /// client last took some of it at `progress`.
    Answering { since: Instant, progress: Instant },
    /// No request in flight since `since`.
    Idle { since: Instant },
}

impl Phase {
    /// When a connection in this phase is closed, unless it moves on first.
    fn deadline(self, limits: &HttpLimits) -> Option<Instant> {
        match self {
            Phase::Head { since } => Some(since + limits.header_timeout),
            Phase::Handling => None,
            Phase::Answering { since, progress } => {
                Some((progress + limits.idle_timeout).min(since + limits.answer_timeout))
            }
            Phase::Idle { since } => Some(since + limits.idle_timeout),
        }
    }
}

/// A connection's [`Phase`], moved on by its socket ([`Watched`]) and its requests
/// ([`InFlight`]); `changed` wakes the connection's task to take the new deadline, or
/// to close when asked to make room; `became_idle` tells the accept loop
/// ([`OpenConnections`]).
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
    became_idle: Arc<Notify>,
}

#[derive(Debug)]
struct ActivityState {
    phase: Phase,
    in_flight: usize,
    /// Set by [`Activity::ask_to_close`].
    asked_to_close: bool,
}

impl Activity {
    fn new(became_idle: Arc<Notify>) -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                phase: Phase::Head {
                    since: Instant::now(),
                },
                in_flight: 0,
                asked_to_close: false,
            }),
            changed: Notify::new(),
            became_idle,
        }
    }

    fn update(&self, change: impl FnOnce(&mut ActivityState) -> bool) {
        let changed = change(&mut lock(&self.state));
        if changed {
            self.changed.notify_one();
        }
    }

    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        lock(&self.state).phase.deadline(limits)
    }

    /// Since when the connection has had no request in flight, if it has none.
    fn idle_since(&self) -> Option<Instant> {
        match lock(&self.state).phase {
            Phase::Idle { since } => Some(since),
            _ => None,
        }
    }

    /// Asks the connection to close, to make room for a new client: at once if it is
    /// still idle, else after the request that has just begun.
    fn ask_to_close(&self) {
        self.update(|state| {
            state.asked_to_close = true;
            true
        });
    }

    fn asked_to_close(&self) -> bool {
        lock(&self.state).asked_to_close
    }

    /// Bytes arrived: after an idle pause, they begin the next request head.
    fn read(&self) {
        self.update(|state| match state.phase {
            Phase::Idle { .. } => {
                state.phase = Phase::Head {
                    since: Instant::now(),
                };
                true
            }
            _ => false,
        });
    }

    /// Bytes left: an answer being written made progress (a later deadline, so the
    /// task need not wake).
    fn wrote(&self) {
        self.update(|state| {
            if let Phase::Answering { progress, .. } = &mut state.phase {
                *progress = Instant::now();
            }
            false
        });
    }
}

/// One request from its head to the end of its answer.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity.update(|state| {
            state.in_flight += 1;
            state.phase = Phase::Handling;
            true
        });
        InFlight(activity)
    }

    /// The handler has answered; the answer is being written.
    fn answering(&self) {
        self.0.update(|state| {
            let now = Instant::now();
            state.phase = Phase::Answering {
                since: now,
                progress: now,
            };
            true
        });
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut idle = false;
        self.0.update(|state| {
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.phase = Phase::Idle {
                    since: Instant::now(),
                };
                idle = true;
            }
            true
        });
        if idle {
            self.0.became_idle.notify_waiters();
        }
    }
}

/// The connection's socket, telling its [`Activity`] when bytes move.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_reserve() {
        assert_eq!(connection_cap(1024, 1024 * 1024), 1024);
        assert_eq!(connection_cap(1024, 1024), 1024 - 64);
        assert_eq!(connection_cap(1000, 128), 64);
        assert_eq!(connection_cap(1024, 10), 1, "never below one");
        assert_eq!(connection_cap(1024, u64::MAX), 1024, "RLIM_INFINITY");
    }

    #[test]
    fn each_phase_has_its_deadline() {
        let limits = HttpLimits {
            max_connections: 1,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(120),
            answer_timeout: Duration::from_secs(300),
        };
        let t = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(Phase::Head { since: t }.deadline(&limits), Some(t + s(10)));
        assert_eq!(Phase::Handling.deadline(&limits), None);
        assert_eq!(
            Phase::Answering {
                since: t,
                progress: t
            }
            .deadline(&limits),
            Some(t + s(60)),
            "a client that takes nothing is closed after the idle timeout"
        );
        assert_eq!(
            Phase::Answering {
                since: t,
                progress: t + s(290)
            }
            .deadline(&limits),
            Some(t + s(300)),
            "one that keeps taking a little is closed after the answer timeout"
        );
        assert_eq!(Phase::Idle { since: t }.deadline(&limits), Some(t + s(60)));
    }

    #[tokio::test]
    async fn a_connection_moves_through_its_phases() {
        let limits = HttpLimits::default();
        let activity = Arc::new(Activity::new(Arc::default()));
        let started = activity.deadline(&limits).unwrap();
        // Bytes of the first head do not move its deadline (a trickle gains nothing).
        activity.read();
        assert_eq!(activity.deadline(&limits), Some(started));
        let request = InFlight::start(activity.clone());
        assert_eq!(activity.deadline(&limits), None);
        request.answering();
        assert!(activity.deadline(&limits).is_some());
        let answered = Instant::now();
        drop(request);
        let idle = activity.deadline(&limits).unwrap();
        assert!(
            idle >= answered + limits.idle_timeout,
            "idle from the answer's end"
        );
        // The next request's first byte starts its header timeout.
        activity.read();
        let head = activity.deadline(&limits).unwrap();
        assert!(head < idle, "the header timeout is the shorter one");
    }

    #[tokio::test]
    async fn room_is_made_by_the_connection_idle_the_longest() {
        let open = OpenConnections::default();
        let (listed_first, idle_longest, busy) = (open.add(), open.add(), open.add());
        drop(InFlight::start(idle_longest.clone()));
        // So that the two went idle at different instants, whatever the clock's grain.
        std::thread::sleep(Duration::from_millis(1));
        drop(InFlight::start(listed_first.clone()));
        let _request = InFlight::start(busy.clone());
        open.close_longest_idle();
        assert!(idle_longest.asked_to_close());
        assert!(!listed_first.asked_to_close());
        assert!(!busy.asked_to_close(), "a connection in use is never asked");
        for _ in 0..100 {
            drop(open.add());
        }
        assert!(
            lock(&open.activities).len() <= 8,
            "ended connections are dropped from the list"
        );
    }

    #[test]
    fn accept_failures_back_off_to_a_second() {
        let mut failures = AcceptFailures::default();
        let error = io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<_> = (0..10).map(|_| failures.failed(&error)).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert!(pauses.windows(2).all(|pair| pair[0] <= pair[1]));
        assert_eq!(pauses[9], Duration::from_secs(1));
        failures.succeeded();
        assert_eq!(failures.failed(&error), Duration::from_millis(10));
    }
}
