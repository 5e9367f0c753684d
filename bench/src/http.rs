//! A minimal HTTP/1.1 GET over a fresh connection: what the benchmarks time as a client's request to the server under test.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use anyhow::{Context as _, ensure};

/// One GET over a fresh connection (`Connection: close`), asking for `accept`: the status and
/// the body (chunked transfer decoded).
pub fn get(addr: SocketAddr, path: &str, accept: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let body = &buf[split + 4..];
    if head.contains("transfer-encoding: chunked") {
        return Ok((status, dechunk(body)?));
    }
    Ok((status, body.to_vec()))
}

/// The payload of a chunked body.
fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without its size line")?;
        let size_line = std::str::from_utf8(&body[..eol])?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size_line:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(body.len() >= size + 2, "a chunk cut short");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Damselfly's router served by `damselfly serve`'s own code on a free 127.0.0.1 port of `rt`,
/// until [`InProcess::stop`].
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    /// Serves `api` within the default limits.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        api: std::sync::Arc<damselfly_query::api::Api>,
    ) -> anyhow::Result<Self> {
        use damselfly_query::api;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(api::serve(listener, api, api::Limits::default(), async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, stop, server })
    }

    /// Stops serving and waits for the server to end.
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        rt.block_on(self.server)??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks_and_stops_at_the_last() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        assert_eq!(dechunk(body).unwrap(), b"hello, world");
        assert!(dechunk(b"5\r\nhel").is_err());
    }
}
