//! A minimal HTTP/1.1 keep-alive client for the benchmark's Dorado clients.
//!
//! A closed-loop client has exactly one request outstanding, so the cheapest
//! correct client is one persistent connection per benchmark client: write the
//! request in one `write`, read the response head and a `Content-Length` body.
//! No pool, no per-request allocation beyond the reply. This matters on a
//! small machine, where every cycle the client spends is taken from the system
//! under test. It speaks only what the Dorado API answers (`Content-Length`
//! bodies); anything else is an error, never a guess.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Largest response body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One keep-alive connection to one server (re-opened after a failure).
#[derive(Debug)]
pub(crate) struct Conn {
    addr: SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    buf: Vec<u8>,
}

/// A response: status and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            host: addr.to_string(),
            stream: None,
            request: Vec::with_capacity(512),
            buf: Vec::with_capacity(4096),
        }
    }

    /// `POST path` with `headers` and `body`.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        self.request.clear();
        self.request.extend_from_slice(b"POST ");
        self.request.extend_from_slice(path.as_bytes());
        self.request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.request.extend_from_slice(self.host.as_bytes());
        self.request.extend_from_slice(b"\r\ncontent-length: ");
        self.request
            .extend_from_slice(body.len().to_string().as_bytes());
        for (name, value) in headers {
            self.request.extend_from_slice(b"\r\n");
            self.request.extend_from_slice(name.as_bytes());
            self.request.extend_from_slice(b": ");
            self.request.extend_from_slice(value.as_bytes());
        }
        self.request.extend_from_slice(b"\r\n\r\n");
        self.request.extend_from_slice(body);
        let result = self.exchange().await;
        if result.as_ref().map_or(true, |(_, close)| *close) {
            // Unknown state after an error, or the server said close.
            self.stream = None;
            self.buf.clear();
        }
        result.map(|(r, _)| r)
    }

    async fn exchange(&mut self) -> Result<(Response, bool), String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            stream
                .set_nodelay(true)
                .map_err(|e| format!("set TCP_NODELAY: {e}"))?;
            self.stream = Some(stream);
            self.buf.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err("no connection".into());
        };
        stream
            .write_all(&self.request)
            .await
            .map_err(|e| format!("send to {}: {e}", self.addr))?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err("response head too large".into());
            }
            read_more(stream, &mut self.buf, self.addr).await?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        if head.content_length > MAX_BODY {
            return Err(format!("response body of {} bytes", head.content_length));
        }
        let end = head_end + head.content_length;
        while self.buf.len() < end {
            read_more(stream, &mut self.buf, self.addr).await?;
        }
        let body = self.buf[head_end..end].to_vec();
        self.buf.drain(..end);
        Ok((
            Response {
                status: head.status,
                body,
            },
            head.close,
        ))
    }
}

async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    addr: SocketAddr,
) -> Result<(), String> {
    buf.reserve(4096);
    match stream.read_buf(buf).await {
        Ok(0) => Err(format!("{addr} closed the connection")),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read from {addr}: {e}")),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: usize,
    close: bool,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!(
                "transfer-encoding {value:?} is not supported by the benchmark client"
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let content_length = match (content_length, status) {
        (Some(n), _) => n,
        (None, 100..=199 | 204 | 304) => 0,
        (None, _) => return Err("response without content-length".into()),
    };
    Ok(Head {
        status,
        content_length,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\ndorado-index: 3\r\n\r\n")
            .unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: 12,
                close: false
            }
        );
        let h = parse_head(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert!(h.close);
        assert_eq!(h.status, 503);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn talks_to_an_http_server() {
        use axum::routing::post;
        let app = axum::Router::new().route(
            "/echo",
            post(
                |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let seq = headers
                        .get("dorado-seq")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    format!("{seq}:{}", body.len())
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut conn = Conn::new(addr);
        for seq in 1..=3 {
            let s = seq.to_string();
            let r = conn
                .post("/echo", &[("dorado-seq", &s)], b"hello")
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body, format!("{seq}:5").into_bytes());
        }
        let r = conn.post("/nope", &[], b"x").await.unwrap();
        assert_eq!(r.status, 404);
        server.abort();
    }
}
