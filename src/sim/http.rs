//! Minimal HTTP/1.1 server plumbing shared by the simulated services.
//!
//! A [`Server`] binds a loopback port, accepts connections in a background
//! task and hands every request, with its body already read (bounded), to one
//! async handler. Responses are either whole ([`full`], [`json`]) or streamed
//! from a channel ([`streaming`], used for Kubernetes watches). Dropping the
//! `Server` stops accepting and aborts the connections it spawned.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Response body type of every simulated service.
pub type Body = BoxBody<Bytes, Infallible>;

/// Boxed future returned by a [`Handler`].
pub type BoxFut = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// A request handler: the whole request (body read, at most [`MAX_BODY`]) in, a response out.
pub type Handler = Arc<dyn Fn(Request<Bytes>) -> BoxFut + Send + Sync>;

/// Largest request body the simulated services accept.
pub const MAX_BODY: usize = 1 << 20;

/// A running loopback HTTP server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Bind `bind` (use `127.0.0.1:0` for any free port) and serve `handler`.
    pub async fn start(bind: SocketAddr, handler: Handler) -> std::io::Result<Server> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, handler));
        Ok(Server { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, handler: Handler) {
    // Connections live in the JoinSet so that aborting this task aborts them too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = handler.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handle(req, handler).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(req: Request<Incoming>, handler: Handler) -> Response<Body> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => handler(Request::from_parts(parts, collected.to_bytes())).await,
        Err(_) => full(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain",
            "request body too large\n",
        ),
    }
}

/// A whole response with a content type.
pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

/// A streamed 200 response: every chunk sent on the returned sender is written
/// as it comes; the response ends when the sender is dropped.
pub fn streaming(content_type: &str) -> (mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    (tx, resp)
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
