//! The webhook load's own HTTP/1.1 client: keep-alive connections, one
//! request at a time on each, and nothing else.
//!
//! On two cores the client shares the CPU with the service it drives, so
//! whatever the client spends is taken from the service and, more so, from
//! the bare handler it is compared with. reqwest (hyper's pool, a task per
//! connection, header maps, a URL per request) cost about 30 µs of CPU per
//! webhook; this at most about 7 (README, Performance). The other calls of the loadtest (checks,
//! streams, PaymentIntents) are few and keep reqwest.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Responses are small JSON bodies; a larger one is a broken server.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
const MAX_HEADERS: usize = 32;

pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

struct Connection {
    stream: TcpStream,
    buf: BytesMut,
}

/// Connections to one `http://host:port`, reused while the server keeps them.
pub struct RawClient {
    /// Every address the host resolved to, tried in turn (`localhost` may
    /// name `::1` first while the server listens on 127.0.0.1).
    addrs: Vec<SocketAddr>,
    host: String,
    /// The base URL's path, if any, before every request's path.
    prefix: String,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl RawClient {
    /// A client of `base` (`http://host:port[/prefix]`), resolved once.
    pub async fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(base).with_context(|| format!("{base} is not a URL"))?;
        anyhow::ensure!(url.scheme() == "http", "{base}: only http:// is supported");
        let host = url.host_str().context("no host")?.to_owned();
        let port = url.port_or_known_default().context("no port")?;
        // An IPv6 literal comes bracketed, as URLs write it.
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare_host, port)).await?.collect();
        anyhow::ensure!(!addrs.is_empty(), "{host} does not resolve");
        Ok(Self {
            addrs,
            host: format!("{host}:{port}"),
            prefix: url.path().trim_end_matches('/').to_owned(),
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// `POST path` with a JSON body and these extra headers.
    pub async fn post_json(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut request = Vec::with_capacity(256 + body.len());
        request.extend_from_slice(b"POST ");
        request.extend_from_slice(self.prefix.as_bytes());
        request.extend_from_slice(path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        request.extend_from_slice(self.host.as_bytes());
        request.extend_from_slice(b"\r\nContent-Type: application/json\r\n");
        for (name, value) in headers {
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
        tokio::time::timeout(self.timeout, self.send(&request))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
    }

    async fn send(&self, request: &[u8]) -> io::Result<Response> {
        let reused = self.idle.lock().unwrap().pop();
        if let Some(mut conn) = reused {
            match exchange(&mut conn, request).await {
                Ok((response, keep)) => {
                    self.give_back(conn, keep);
                    return Ok(response);
                }
                // The server may have closed an idle connection just as we
                // sent. Only when nothing of an answer came back is the
                // request tried once more, on a fresh connection: once a
                // byte came, the server had it, and a second copy would be
                // a second delivery.
                Err(e)
                    if conn.buf.is_empty()
                        && (e.kind() == io::ErrorKind::UnexpectedEof || is_reset(&e)) => {}
                Err(e) => return Err(e),
            }
        }
        let stream = TcpStream::connect(&self.addrs[..]).await?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream,
            buf: BytesMut::with_capacity(4096),
        };
        let (response, keep) = exchange(&mut conn, request).await?;
        self.give_back(conn, keep);
        Ok(response)
    }

    fn give_back(&self, conn: Connection, keep_alive: bool) {
        if keep_alive {
            self.idle.lock().unwrap().push(conn);
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Writes one request and reads its response; also whether the connection
/// may carry another.
async fn exchange(conn: &mut Connection, request: &[u8]) -> io::Result<(Response, bool)> {
    // Empty whenever a connection is pooled; cleared anyway, because the
    // caller reads "no byte of an answer came" from it.
    conn.buf.clear();
    conn.stream.write_all(request).await?;
    loop {
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(&conn.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if conn.buf.len() < MAX_RESPONSE_BYTES => continue,
            Ok(httparse::Status::Partial) => return Err(invalid("response head too large")),
            Err(e) => return Err(invalid(&format!("bad response: {e}"))),
        };
        let status = parsed.code.unwrap_or(0);
        let mut body_len = None;
        let mut keep_alive = true;
        for h in parsed.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                body_len = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok());
            } else if h.name.eq_ignore_ascii_case("connection") {
                keep_alive = !h.value.eq_ignore_ascii_case(b"close");
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(invalid("chunked responses are not read by this client"));
            }
        }
        let body_len = body_len.ok_or_else(|| invalid("response without Content-Length"))?;
        if body_len > MAX_RESPONSE_BYTES {
            return Err(invalid("response body too large"));
        }
        while conn.buf.len() < head_len + body_len {
            if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        conn.buf.advance(head_len);
        let body = conn.buf.split_to(body_len).freeze();
        // Anything past the response would be a second answer to one request.
        let keep_alive = keep_alive && conn.buf.is_empty();
        return Ok((Response { status, body }, keep_alive));
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each connection's requests with `answers`, in
    /// turn, then closes it; it reports how many connections it accepted.
    async fn server(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut connections = 0;
            while let Ok(Ok((mut socket, _))) =
                tokio::time::timeout(Duration::from_millis(300), listener.accept()).await
            {
                connections += 1;
                for answer in &answers {
                    let mut buf = [0u8; 4096];
                    if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                        break;
                    }
                    // In two writes, so that the client meets a partial head.
                    let (a, b) = answer.split_at(answer.len() / 2);
                    socket.write_all(a).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    socket.write_all(b).await.unwrap();
                }
            }
            connections
        });
        (base, task)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n{\"received\":true}";
    const CLOSE: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}";

    #[tokio::test]
    async fn a_kept_connection_carries_the_next_request() {
        let (base, server) = server(vec![OK, OK]).await;
        let client = RawClient::new(&base, Duration::from_secs(5)).await.unwrap();
        for _ in 0..2 {
            let response = client
                .post_json(
                    "/webhooks/stripe",
                    &[("Stripe-Signature", "t=1,v1=00")],
                    b"{}",
                )
                .await
                .unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(&response.body[..], b"{\"received\":true}");
        }
        assert_eq!(server.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_reused() {
        // The server would answer a second request on the same connection
        // with a 200: a client that reused it would see one.
        let (base, server) = server(vec![CLOSE, OK]).await;
        let client = RawClient::new(&base, Duration::from_secs(5)).await.unwrap();
        for _ in 0..2 {
            let response = client.post_json("/x", &[], b"{}").await.unwrap();
            assert_eq!(response.status, 503);
            assert_eq!(&response.body[..], b"{}");
        }
        assert_eq!(server.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_replaced() {
        // The server answers once per connection and then hangs up without
        // saying so: the second request finds the pooled connection closed.
        let (base, server) = server(vec![OK]).await;
        let client = RawClient::new(&base, Duration::from_secs(5)).await.unwrap();
        for _ in 0..2 {
            let response = client.post_json("/x", &[], b"{}").await.unwrap();
            assert_eq!(response.status, 200);
        }
        assert_eq!(server.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn the_base_urls_path_comes_before_the_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/behind/a/proxy/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            socket.write_all(OK).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let client = RawClient::new(&base, Duration::from_secs(5)).await.unwrap();
        let response = client
            .post_json("/webhooks/stripe", &[], b"{}")
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /behind/a/proxy/webhooks/stripe HTTP/1.1\r\n"),
            "{request}"
        );
    }
}
