//! Instance metadata: which cloud, region and instance this VM is, from AWS (IMDSv2), GCP or Azure.
//!
//! HTTP/1.1 by hyper's connection-level client over a tokio `TcpStream`: one request per
//! connection, the whole exchange under a short timeout: the metadata services are plain HTTP on
//! a link-local address, and off-cloud the probes must cost no more than the timeout.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest metadata response read.
const MAX_RESPONSE: usize = 256 * 1024;

/// Azure's instance metadata API version asked for.
pub const AZURE_API_VERSION: &str = "2021-02-01";

/// What the metadata service says about this VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// Cloud service provider: `aws`, `gcp` or `azure`.
    pub csp: String,
    /// Region (for GCP, the zone without its last letter).
    pub region: String,
    /// Instance id (AWS `i-...`, GCP numeric id, Azure vmId).
    pub instance_id: String,
}

/// Why one metadata request failed.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The endpoint is not `http://host[:port][/prefix]`.
    #[error("metadata endpoint `{0}` is not an http://host[:port] URL")]
    Endpoint(String),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The request could not be sent or the answer is not HTTP/1.1 (hyper's error).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The service answered with a status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer is not HTTP or lacks what was asked for.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// A client for one metadata endpoint.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    host: String,
    port: u16,
    prefix: String,
    timeout: Duration,
}

impl MetadataClient {
    /// A client for `endpoint` (e.g. `http://169.254.169.254`); each request gets `timeout`.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, ImdsError> {
        let bad = || ImdsError::Endpoint(endpoint.to_owned());
        let rest = endpoint.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// Sends one request and returns the body of a 200 answer.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<String, ImdsError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, headers))
            .await
            .map_err(|_| ImdsError::Timeout(self.timeout))?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<String, ImdsError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| ImdsError::Malformed(format!("method `{method}`")))?;
        let mut req = Request::builder()
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, &self.host)
            .header(USER_AGENT, "damselfly-agent")
            .header(ACCEPT, "*/*")
            .header(CONNECTION, "close");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if method != Method::GET {
            req = req.header(CONTENT_LENGTH, "0");
        }
        let req = req
            .method(method)
            .body(Empty::<Bytes>::new())
            .map_err(|e| ImdsError::Malformed(format!("request: {e}")))?;
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let answer = async move {
            let response = sender.send_request(req).await?;
            if response.status() != StatusCode::OK {
                return Err(ImdsError::Status(response.status().as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ImdsError::Malformed(format!("body: {e}")))?
                .to_bytes();
            String::from_utf8(body.into())
                .map_err(|_| ImdsError::Malformed("body is not UTF-8".into()))
        };
        // The connection is driven here, beside its one request (no task outlives the timeout);
        // it ends once the answer is in and the request half is dropped.
        let (answer, _) = tokio::join!(answer, connection);
        answer
    }
}

/// Asks AWS (IMDSv2: a token by PUT, then GETs with it).
pub async fn aws(client: &MetadataClient) -> Result<Detected, ImdsError> {
    let token = client
        .request(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .await?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ImdsError::Malformed("empty IMDSv2 token".into()));
    }
    let auth = [("X-aws-ec2-metadata-token", token)];
    let instance_id = client
        .request("GET", "/latest/meta-data/instance-id", &auth)
        .await?;
    let region = client
        .request("GET", "/latest/meta-data/placement/region", &auth)
        .await?;
    detected("aws", region.trim(), instance_id.trim())
}

/// Asks GCP (header `Metadata-Flavor: Google`); the region is the zone without its last part.
pub async fn gcp(client: &MetadataClient) -> Result<Detected, ImdsError> {
    let flavor = [("Metadata-Flavor", "Google")];
    let instance_id = client
        .request("GET", "/computeMetadata/v1/instance/id", &flavor)
        .await?;
    // "projects/123456789/zones/us-central1-a"
    let zone = client
        .request("GET", "/computeMetadata/v1/instance/zone", &flavor)
        .await?;
    let zone = zone.trim().rsplit('/').next().unwrap_or_default();
    let region = zone.rsplit_once('-').map_or(zone, |(r, _)| r);
    detected("gcp", region, instance_id.trim())
}

/// Asks Azure (header `Metadata: true`, `api-version`, JSON answer with `vmId` and `location`).
pub async fn azure(client: &MetadataClient) -> Result<Detected, ImdsError> {
    let body = client
        .request(
            "GET",
            &format!("/metadata/instance/compute?api-version={AZURE_API_VERSION}&format=json"),
            &[("Metadata", "true")],
        )
        .await?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| ImdsError::Malformed(e.to_string()))?;
    let field = |k: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    detected("azure", field("location"), field("vmId"))
}

fn detected(csp: &str, region: &str, instance_id: &str) -> Result<Detected, ImdsError> {
    if instance_id.is_empty() || instance_id.contains(char::is_control) {
        return Err(ImdsError::Malformed(format!(
            "{csp}: no usable instance id"
        )));
    }
    Ok(Detected {
        csp: csp.to_owned(),
        region: region.to_owned(),
        instance_id: instance_id.to_owned(),
    })
}

/// Probes AWS, GCP and Azure at `endpoint` at once; the first that answers (in that order) wins.
/// `None` off-cloud or when nothing answers within the timeout. Never fails: it logs and moves on.
pub async fn detect(endpoint: &str, timeout: Duration) -> Option<Detected> {
    let client = match MetadataClient::new(endpoint, timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "instance metadata detection skipped");
            return None;
        }
    };
    let (a, g, z) = tokio::join!(aws(&client), gcp(&client), azure(&client));
    let mut found = None;
    for (csp, result) in [("aws", a), ("gcp", g), ("azure", z)] {
        match result {
            Ok(d) if found.is_none() => found = Some(d),
            Ok(_) => {}
            Err(e) => tracing::debug!(csp, error = %e, "instance metadata: no answer"),
        }
    }
    match &found {
        Some(d) => tracing::info!(
            csp = %d.csp, region = %d.region, instance = %d.instance_id,
            "instance metadata detected"
        ),
        None => tracing::info!(
            endpoint,
            "no cloud instance metadata found: using configured tags"
        ),
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// One request as the fake server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    type Handler = fn(&Seen) -> Option<(u16, String)>;

    /// Reads a request up to the end of its head; `None` if the client went away first.
    async fn read_head(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let mut chunk = [0_u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        Some(buf)
    }

    /// A fake metadata server on 127.0.0.1:0; a handler answering `None` never answers.
    async fn fake(handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(buf) = read_head(&mut sock).await else {
                        return;
                    };
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let mut lines = text.lines();
                    let mut first = lines.next().unwrap().split(' ');
                    let seen = Seen {
                        method: first.next().unwrap().to_owned(),
                        path: first.next().unwrap().to_owned(),
                        headers: lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
                            .collect(),
                    };
                    log.lock().unwrap().push(seen.clone());
                    match handler(&seen) {
                        Some((status, body)) => {
                            let resp = format!(
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = sock.write_all(resp.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn imdsv2(req: &Seen) -> Option<(u16, String)> {
        Some(match (req.method.as_str(), req.path.as_str()) {
            ("PUT", "/latest/api/token")
                if req.header("X-aws-ec2-metadata-token-ttl-seconds").is_some() =>
            {
                (200, "TOKEN123".into())
            }
            ("GET", p) if req.header("X-aws-ec2-metadata-token") != Some("TOKEN123") => {
                (401, format!("unauthorized {p}"))
            }
            ("GET", "/latest/meta-data/instance-id") => (200, "i-0abc123".into()),
            ("GET", "/latest/meta-data/placement/region") => (200, "ap-northeast-2".into()),
            _ => (404, "not found".into()),
        })
    }

    #[tokio::test]
    async fn aws_imdsv2_token_then_gets() {
        let (url, seen) = fake(imdsv2).await;
        let got = detect(&url, Duration::from_millis(500)).await;
        assert_eq!(
            got,
            Some(Detected {
                csp: "aws".into(),
                region: "ap-northeast-2".into(),
                instance_id: "i-0abc123".into()
            })
        );
        let seen = seen.lock().unwrap();
        let aws: Vec<_> = seen
            .iter()
            .filter(|s| s.path.starts_with("/latest"))
            .collect();
        assert_eq!(aws[0].method, "PUT", "the token comes first");
        assert_eq!(aws.len(), 3);
    }

    #[tokio::test]
    async fn gcp_and_azure_are_recognised() {
        fn gcp_server(req: &Seen) -> Option<(u16, String)> {
            Some(match (req.header("Metadata-Flavor"), req.path.as_str()) {
                (Some("Google"), "/computeMetadata/v1/instance/id") => {
                    (200, "4520031799277581759".into())
                }
                (Some("Google"), "/computeMetadata/v1/instance/zone") => {
                    (200, "projects/1234/zones/asia-northeast3-a".into())
                }
                _ => (404, String::new()),
            })
        }
        let (url, _) = fake(gcp_server).await;
        let d = detect(&url, Duration::from_millis(500)).await.unwrap();
        assert_eq!(
            (d.csp.as_str(), d.region.as_str()),
            ("gcp", "asia-northeast3")
        );
        assert_eq!(d.instance_id, "4520031799277581759");

        fn azure_server(req: &Seen) -> Option<(u16, String)> {
            let ok = req.header("Metadata") == Some("true")
                && req.path
                    == format!(
                        "/metadata/instance/compute?api-version={AZURE_API_VERSION}&format=json"
                    );
            Some(if ok {
                (
                    200,
                    r#"{"location":"koreacentral","vmId":"02aab8a4-74ef-476e","name":"vm1"}"#
                        .into(),
                )
            } else {
                (400, String::new())
            })
        }
        let (url, _) = fake(azure_server).await;
        let d = detect(&url, Duration::from_millis(500)).await.unwrap();
        assert_eq!(
            (d.csp.as_str(), d.region.as_str()),
            ("azure", "koreacentral")
        );
        assert_eq!(d.instance_id, "02aab8a4-74ef-476e");
    }

    #[tokio::test]
    async fn a_silent_service_costs_one_timeout() {
        let (url, _) = fake(|_| None).await;
        let started = std::time::Instant::now();
        let got = detect(&url, Duration::from_millis(300)).await;
        let took = started.elapsed();
        assert_eq!(got, None);
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(
            took < Duration::from_millis(1500),
            "probes run at once: {took:?}"
        );
        let client = MetadataClient::new(&url, Duration::from_millis(100)).unwrap();
        let err = client.request("GET", "/", &[]).await.unwrap_err();
        assert!(matches!(err, ImdsError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn nothing_listening_is_none() {
        // Bind then drop to get a port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let got = detect(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(got, None);
    }

    #[test]
    fn endpoints_parse() {
        let c = MetadataClient::new("http://10.0.0.1:8080/base/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("10.0.0.1", 8080, "/base")
        );
        assert!(MetadataClient::new("https://x", Duration::from_secs(1)).is_err());
        assert!(MetadataClient::new("http://:80", Duration::from_secs(1)).is_err());
    }

    /// A server on 127.0.0.1:0 that answers every request with `reply`, byte for byte.
    async fn raw(reply: &'static [u8]) -> MetadataClient {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if read_head(&mut sock).await.is_some() {
                        let _ = sock.write_all(reply).await;
                    }
                });
            }
        });
        MetadataClient::new(&format!("http://{addr}"), Duration::from_secs(1)).unwrap()
    }

    #[tokio::test]
    async fn responses_parse() {
        let chunked = raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ni-01\r\n3\r\n234\r\n0\r\n\r\n",
        )
        .await;
        let body = chunked.request("GET", "/", &[]).await.unwrap();
        assert_eq!(body, "i-01234");
        let missing = raw(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        assert!(matches!(
            missing.request("GET", "/", &[]).await,
            Err(ImdsError::Status(404))
        ));
        let garbage = raw(b"garbage").await;
        assert!(garbage.request("GET", "/", &[]).await.is_err());
    }
}
