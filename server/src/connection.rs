//! One client connection: pgwire's TLS negotiation and message loop, over a socket that sends the
//! server's messages when the client waits for them rather than one system call per message.
//!
//! pgwire flushes after many single messages (BindComplete, RowDescription, CommandComplete, then
//! ReadyForQuery): four sends, four trips through the loopback or network stack and up to four
//! client wake-ups for one prepared lookup. PostgreSQL buffers its output and sends it when the
//! client has to answer: at ReadyForQuery, on the client's Flush, during COPY FROM STDIN and
//! authentication, and whenever its buffer fills. [`TurnTakingSocket`] does the same below
//! pgwire, reading only the message boundaries of what pgwire writes; bench/online_lookup
//! measured the difference (docs/performance.md).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::StreamExt;
use pgwire::api::{ClientInfo, PgWireConnectionState, PgWireServerHandlers};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

/// How long a client has to complete its startup and authentication (PostgreSQL's
/// `authentication_timeout` defaults to one minute too).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Above this many unsent bytes, output is sent without waiting for a turn: a large result
/// streams instead of piling up in memory.
const SEND_THRESHOLD: usize = 64 * 1024;

/// Backend message types after which the client has to act, so the output goes out:
/// ReadyForQuery, CopyInResponse, CopyBothResponse, an authentication request, and an error (a
/// FATAL one is followed by the connection's close; an ordinary one costs a send but is rare).
const TURN_MESSAGES: &[u8] = b"ZGWRE";

/// Set by the extended protocol's Flush: the client asked for everything sent so far.
#[derive(Debug, Default)]
pub struct FlushRequest(AtomicBool);

impl FlushRequest {
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// Follows the backend message boundaries in the bytes written: each message is a type byte
/// and a big-endian length that counts itself but not the type.
#[derive(Debug, Default)]
struct MessageBoundaries {
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message's body still to come.
    body_left: usize,
    /// The type of the last message whose header was seen.
    last_type: Option<u8>,
}

impl MessageBoundaries {
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skipped = self.body_left.min(bytes.len());
                self.body_left -= skipped;
                bytes = &bytes[skipped..];
                continue;
            }
            let taken = (self.header.len() - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&bytes[..taken]);
            self.header_len += taken;
            bytes = &bytes[taken..];
            if self.header_len == self.header.len() {
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.last_type = Some(self.header[0]);
                self.body_left = length.saturating_sub(4);
                self.header_len = 0;
            }
        }
    }

    /// Whether the output so far ends with a whole message after which the client acts.
    fn at_turn(&self) -> bool {
        self.header_len == 0
            && self.body_left == 0
            && self.last_type.is_some_and(|t| TURN_MESSAGES.contains(&t))
    }
}

/// A socket whose writes are held until the client's turn (see the module comment).
pub struct TurnTakingSocket<S> {
    inner: S,
    unsent: Vec<u8>,
    /// How much of `unsent` has been written to `inner`.
    written: usize,
    boundaries: MessageBoundaries,
    flush_request: Arc<FlushRequest>,
    /// A send that started and has to finish before anything else is decided.
    sending: bool,
}

impl<S: AsyncWrite + Unpin> TurnTakingSocket<S> {
    fn new(inner: S, flush_request: Arc<FlushRequest>) -> Self {
        TurnTakingSocket {
            inner,
            unsent: Vec::new(),
            written: 0,
            boundaries: MessageBoundaries::default(),
            flush_request,
            sending: false,
        }
    }

    /// Writes all of `unsent` to the inner socket and flushes it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sending = true;
        while self.written < self.unsent.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.unsent[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.unsent.clear();
        self.written = 0;
        self.sending = false;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TurnTakingSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TurnTakingSocket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sending || this.unsent.len() >= SEND_THRESHOLD {
            ready!(this.poll_send(cx))?;
        }
        this.boundaries.observe(buf);
        this.unsent.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sending
            || this.boundaries.at_turn()
            || this.flush_request.take()
            || this.unsent.len() >= SEND_THRESHOLD
        {
            this.poll_send(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The threads that serve connections, each a single-threaded runtime with its own I/O driver.
/// A request and its reply stay on one thread, with no hand-over between workers and no
/// wake-up of a second one; connections are spread over the threads in turn. There is one
/// thread per core (`--connection-threads`): with more, two busy threads sharing a core make a
/// request that arrives while its thread is descheduled wait out a scheduler slice (measured in
/// docs/performance.md, point 9), while one thread per core answers every connection whose
/// request is ready in one turn of its event loop. Queries that compute run on the engine's
/// executor, not here.
pub struct ConnectionThreads {
    runtimes: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    /// Dropping these ends the threads.
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl ConnectionThreads {
    pub fn start(threads: usize) -> io::Result<ConnectionThreads> {
        let count = threads.max(1);
        let mut runtimes = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtimes.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("quiver-conn-{index}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                    runtime.shutdown_background();
                })?;
        }
        Ok(ConnectionThreads {
            runtimes,
            next: std::sync::atomic::AtomicUsize::new(0),
            _stops: stops,
        })
    }

    /// The runtime for the next connection.
    pub fn next(&self) -> &tokio::runtime::Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len();
        &self.runtimes[index]
    }
}

/// Serves one connection until the client leaves or the connection fails.
pub async fn serve<H: PgWireServerHandlers>(
    tcp: TcpStream,
    handlers: H,
    tls_acceptor: Option<TlsAcceptor>,
) -> io::Result<()> {
    let startup_deadline = tokio::time::sleep(STARTUP_TIMEOUT);
    tokio::pin!(startup_deadline);
    // Without an acceptor, negotiate_tls refuses SSLRequest (the client then decides whether
    // plaintext will do); GSSENCRequest is always refused.
    let negotiated = tokio::select! {
        _ = &mut startup_deadline => return Ok(()),
        negotiated = negotiate_tls(tcp, tls_acceptor) => negotiated?,
    };
    let Some(socket) = negotiated else {
        return Ok(());
    };
    let flush_request = Arc::new(FlushRequest::default());
    let old = socket.into_parts();
    let mut parts = FramedParts::new(
        TurnTakingSocket::new(old.io, flush_request.clone()),
        old.codec,
    );
    parts.read_buf = old.read_buf;
    parts.write_buf = old.write_buf;
    let mut socket = Framed::from_parts(parts);
    socket.session_extensions().insert(flush_request);

    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let message = if starting {
            tokio::select! {
                _ = &mut startup_deadline => None,
                message = socket.next() => message,
            }
        } else {
            socket.next().await
        };
        let message = match message {
            Some(Ok(message)) => message,
            // A message that does not decode ends the connection, as in PostgreSQL.
            Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            None => break,
        };
        // Some clients (asyncpg) send Terminate and wait for the server to close.
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let in_extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        if let Err(e) = process_message(
            message,
            &mut socket,
            startup.clone(),
            simple.clone(),
            extended.clone(),
            copy.clone(),
            cancel.clone(),
        )
        .await
        {
            process_error(&mut socket, e, in_extended_query).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_turn_is_a_whole_turn_message_at_the_end() {
        let mut boundaries = MessageBoundaries::default();
        assert!(!boundaries.at_turn());
        boundaries.observe(&message(b'2', b""));
        assert!(
            !boundaries.at_turn(),
            "BindComplete: the client waits for more"
        );
        let mut stream = message(b'D', b"\x00\x01\x00\x00\x00\x01Z");
        stream.extend(message(b'C', b"SELECT 1\0"));
        boundaries.observe(&stream);
        assert!(
            !boundaries.at_turn(),
            "a Z inside a row is no ReadyForQuery"
        );
        let ready = message(b'Z', b"I");
        boundaries.observe(&ready[..3]);
        assert!(!boundaries.at_turn(), "half a header");
        boundaries.observe(&ready[3..5]);
        assert!(!boundaries.at_turn(), "header without its body");
        boundaries.observe(&ready[5..]);
        assert!(boundaries.at_turn());
        boundaries.observe(&message(b'T', b"\x00\x00"));
        assert!(!boundaries.at_turn());
    }

    #[tokio::test]
    async fn output_is_held_until_the_clients_turn_or_a_flush() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let flush = Arc::new(FlushRequest::default());
        let mut socket = TurnTakingSocket::new(server, flush.clone());
        let mut received = [0u8; 64];

        socket.write_all(&message(b'2', b"")).await.unwrap();
        socket.flush().await.unwrap();
        let nothing = tokio::time::timeout(Duration::from_millis(50), client.read(&mut received));
        assert!(nothing.await.is_err(), "BindComplete alone is held");

        socket.write_all(&message(b'Z', b"I")).await.unwrap();
        socket.flush().await.unwrap();
        let mut both = [0u8; 11];
        client.read_exact(&mut both).await.unwrap();
        assert_eq!(both[0], b'2');
        assert_eq!(both[5], b'Z');

        socket.write_all(&message(b't', b"\x00\x00")).await.unwrap();
        flush.request();
        socket.flush().await.unwrap();
        let mut description = [0u8; 7];
        client.read_exact(&mut description).await.unwrap();
        assert_eq!(description[0], b't', "a Flush sends what is held");
    }

    #[tokio::test]
    async fn a_large_output_streams_before_the_turn() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut socket = TurnTakingSocket::new(server, Arc::new(FlushRequest::default()));
        let row = message(b'D', &[0u8; 1000]);
        let reader = tokio::spawn(async move {
            let mut first = vec![0u8; SEND_THRESHOLD];
            client.read_exact(&mut first).await.map(|_| first[0])
        });
        for _ in 0..(SEND_THRESHOLD / row.len() + 2) {
            socket.write_all(&row).await.unwrap();
            socket.flush().await.unwrap();
        }
        assert_eq!(reader.await.unwrap().unwrap(), b'D');
    }
}
