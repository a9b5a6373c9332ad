//! A tiny keep-alive HTTP/1.1 client for the simulated load balancer and its load.
//!
//! Both the ALB emulator (proxy → pods) and the load generator (clients →
//! ALB) need a client that keeps connections open, like real ones do, and
//! that tells *how* a request failed: refused, reset or closed before the
//! answer, or too slow. A [`Pool`] per destination holds idle connections;
//! [`Pool::get`] takes one (or connects), writes a `GET`, reads the status
//! line, the headers and a `Content-Length` body, and puts the connection
//! back when the exchange was clean. Only what the simulated servers send is
//! understood (no chunked bodies): this is test plumbing, not a general client.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 1 << 20;
/// Idle connections kept per destination; more are closed after use.
const MAX_IDLE: usize = 64;

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection could not be opened (nothing listens: refused).
    Refused,
    /// The connection was reset or closed before the whole answer came.
    Reset,
    /// No whole answer within the timeout.
    Timeout,
    /// The answer was not HTTP/1.1 as the simulated servers speak it.
    Malformed,
}

impl Failure {
    /// Short name for tables and plots.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Malformed => "malformed",
        }
    }
}

/// A whole HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Idle keep-alive connections to one address.
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<TcpStream>>,
}

impl Pool {
    /// A pool for `addr`; connections are opened on demand.
    pub fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The destination.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`, the whole exchange (connect included) within `timeout`.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<Answer, Failure> {
        match tokio::time::timeout(timeout, self.exchange(path)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn exchange(&self, path: &str) -> Result<Answer, Failure> {
        let pooled = self.lock().pop();
        let mut stream = match pooled {
            Some(s) => s,
            None => TcpStream::connect(self.addr)
                .await
                .map_err(|_| Failure::Refused)?,
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: drainwait-sim\r\n\r\n",
            self.addr
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|_| Failure::Reset)?;
        let (answer, reusable) = read_answer(&mut stream).await?;
        if reusable {
            let mut idle = self.lock();
            if idle.len() < MAX_IDLE {
                idle.push(stream);
            }
        }
        Ok(answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TcpStream>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Read one response; `true` when the connection may carry another request.
async fn read_answer(stream: &mut TcpStream) -> Result<(Answer, bool), Failure> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(Failure::Malformed);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            // EOF before a whole head: the server went away mid-request.
            Ok(0) | Err(_) => return Err(Failure::Reset),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| Failure::Malformed)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(Failure::Malformed)?;
    let mut length = 0usize;
    let mut keep_alive = true;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Failure::Malformed);
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| Failure::Malformed)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Failure::Malformed);
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep_alive = false;
        }
    }
    if length > MAX_BODY {
        return Err(Failure::Malformed);
    }
    let mut body = buf.split_off(head_end + 4);
    while body.len() < length {
        let mut chunk = vec![0u8; (length - body.len()).min(64 * 1024)];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Failure::Reset),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    // Bytes past the body would belong to no request: do not reuse such a connection.
    let reusable = keep_alive && body.len() == length;
    body.truncate(length);
    Ok((Answer { status, body }, reusable))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::http::{self, Server};
    use hyper::StatusCode;
    use std::sync::Arc;

    #[tokio::test]
    async fn keeps_connections_and_classifies_failures() {
        let handler: http::Handler = Arc::new(|req| {
            Box::pin(async move {
                let status = if req.uri().path() == "/teapot" {
                    StatusCode::IM_A_TEAPOT
                } else {
                    StatusCode::OK
                };
                http::full(status, "text/plain", "hello")
            })
        });
        let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), handler)
            .await
            .expect("server");
        let pool = Pool::new(server.addr());
        let t = Duration::from_secs(2);
        let a = pool.get("/", t).await.expect("answer");
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(pool.get("/teapot", t).await.expect("answer").status, 418);
        assert_eq!(pool.lock().len(), 1, "one connection, reused");

        let addr = server.addr();
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The pooled connection was closed by the server: reset; a new one is refused.
        assert_eq!(pool.get("/", t).await.err(), Some(Failure::Reset));
        assert_eq!(
            Pool::new(addr).get("/", t).await.err(),
            Some(Failure::Refused)
        );
    }
}
