//! `damselfly serve` as a child process on a free port, and a one-request HTTP/1.1 client for it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::free_port;

/// `damselfly serve` on a free port, stopped when dropped.
pub struct Server {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Server {
    /// Starts `damselfly serve` over `lake` and waits until its health check answers.
    pub fn start(lake: &Path) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_damselfly"))
            .args(["serve", "--lake", lake.to_str().unwrap(), "--listen", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start damselfly serve");
        let server = Server { child, addr };
        let until = Instant::now() + Duration::from_secs(30);
        while get(&server.addr, "/dragonfly/healthcheck").map(|r| r.0) != Some(204) {
            assert!(Instant::now() < until, "damselfly serve did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The server's base URL, `http://host:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// GETs `path`: the status and the body as JSON (`null` when empty).
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = get(&self.addr, path).unwrap_or_else(|| panic!("GET {path} failed"));
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
        };
        (status, body)
    }

    /// GETs a metric API path: its JSON answer, asserting a 200.
    pub fn api(&self, path: &str) -> Value {
        let (status, body) = self.get_json(path);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET: the status and the body.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    get_with_head(addr, path).map(|(status, _, body)| (status, body))
}

/// One HTTP/1.1 GET: the status, the head (lower-cased) and the body (a chunked one decoded, as
/// Go's servers send them).
pub fn get_with_head(addr: &str, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("\r\ntransfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Some((status, head, String::from_utf8(body).ok()?))
}

/// Decodes a chunked transfer encoding (no trailers expected).
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}
