//! `CutProxy`: an HTTP/1.1 proxy in front of a registry that cuts blob
//! downloads midway, and can answer chosen paths itself.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::http::{self, Framing, Head};

/// When blob responses are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutPolicy {
    Never,
    /// The first 200/206 response for each blob digest.
    OncePerBlob,
    /// Every 200/206 blob response.
    Always,
}

/// One request that went through the proxy.
#[derive(Debug, Clone)]
pub struct ProxyRecord {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The request's `Range` header, forwarded unchanged.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes sent to the client.
    pub body_bytes: u64,
    /// Whether the proxy cut this response.
    pub cut: bool,
}

/// A response the proxy sends itself instead of asking the registry.
#[derive(Debug, Clone)]
pub struct CannedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CannedResponse {
    /// A 200 with that `Content-Type` and a `Docker-Content-Digest` of the body,
    /// the way a registry serves a manifest.
    pub fn manifest(media_type: &str, body: Vec<u8>) -> CannedResponse {
        CannedResponse {
            status: 200,
            headers: vec![
                ("Content-Type".into(), media_type.into()),
                ("Docker-Content-Digest".into(), super::sha256_digest(&body)),
                ("Docker-Distribution-Api-Version".into(), "registry/2.0".into()),
            ],
            body,
        }
    }
}

struct Shared {
    upstream: String,
    policy: CutPolicy,
    cut_after: u64,
    cut_blobs: Mutex<HashSet<String>>,
    records: Mutex<Vec<ProxyRecord>>,
    canned: Mutex<HashMap<String, CannedResponse>>,
    /// Open client connections, to shut down when the proxy is dropped.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    stop: AtomicBool,
}

/// A proxy on 127.0.0.1 in front of `upstream` (a registry's `addr()`).
///
/// Requests and responses are forwarded byte for byte (a `Range` header
/// goes through unchanged, and so does the `Host` header, so upload
/// `Location`s point back at the proxy). For a `GET .../blobs/<digest>`
/// answered 200 or 206 with a `Content-Length`, the proxy may send only the
/// first `cut_after` bytes of the body and then close both connections. It
/// also records every request (see [`CutProxy::requests`]) and can answer
/// chosen paths itself ([`CutProxy::respond`]), e.g. with a manifest the
/// registry would refuse to store or serve. Dropping it stops it.
pub struct CutProxy {
    addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl CutProxy {
    /// Cuts the first download of each blob after `cut_after` body bytes;
    /// later downloads of that blob (with or without `Range`) pass through.
    pub fn new(upstream: &str, cut_after: u64) -> CutProxy {
        Self::start(upstream, CutPolicy::OncePerBlob, cut_after)
    }

    /// Cuts every blob download after `cut_after` body bytes (a client that
    /// retries forever never finishes).
    pub fn always(upstream: &str, cut_after: u64) -> CutProxy {
        Self::start(upstream, CutPolicy::Always, cut_after)
    }

    /// Cuts nothing: only records requests and serves canned responses.
    pub fn passthrough(upstream: &str) -> CutProxy {
        Self::start(upstream, CutPolicy::Never, 0)
    }

    fn start(upstream: &str, policy: CutPolicy, cut_after: u64) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the cut proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            policy,
            cut_after,
            cut_blobs: Mutex::default(),
            records: Mutex::default(),
            canned: Mutex::default(),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("cut-proxy {addr}"))
            .spawn(move || accept_loop(&listener, &accepting))
            .expect("spawn the cut proxy");
        CutProxy { addr, shared, acceptor: Some(acceptor) }
    }

    /// "127.0.0.1:PORT": use it in place of the registry's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many responses were cut so far.
    pub fn cuts(&self) -> usize {
        self.shared.records.lock().unwrap().iter().filter(|r| r.cut).count()
    }

    /// Every request so far, in the order their responses ended.
    pub fn requests(&self) -> Vec<ProxyRecord> {
        self.shared.records.lock().unwrap().clone()
    }

    /// The requests for one blob (`sha256:...`).
    pub fn blob_requests(&self, digest: &str) -> Vec<ProxyRecord> {
        self.requests().into_iter().filter(|r| blob_digest(&r.method, &r.path) == Some(digest)).collect()
    }

    /// Answers GET and HEAD of `path` (e.g. "/v2/repo/manifests/tag", no
    /// query) with `response` instead of forwarding them.
    pub fn respond(&self, path: &str, response: CannedResponse) {
        self.shared.canned.lock().unwrap().insert(path.to_string(), response);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr); // wakes the blocking accept
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, conn) in self.shared.conns.lock().unwrap().drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = conn.try_clone() {
            shared.conns.lock().unwrap().insert(id, clone);
        }
        let shared = Arc::clone(shared);
        let _ = thread::Builder::new().name("cut-proxy conn".into()).spawn(move || {
            let _ = serve_connection(conn, &shared);
            shared.conns.lock().unwrap().remove(&id);
        });
    }
}

/// `Some("sha256:...")` for a blob download path "/v2/<name>/blobs/<digest>".
fn blob_digest<'a>(method: &str, path: &'a str) -> Option<&'a str> {
    if !method.eq_ignore_ascii_case("GET") {
        return None;
    }
    let (repo_part, digest) = path.rsplit_once("/blobs/")?;
    (repo_part.starts_with("/v2/") && digest.contains(':') && !digest.contains('/')).then_some(digest)
}

fn serve_connection(client: TcpStream, shared: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(http::IO_TIMEOUT))?;
    client.set_nodelay(true)?;
    let mut client_out = client.try_clone()?;
    let mut client_in = BufReader::new(client);
    let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;

    while let Some(raw_head) = http::read_head(&mut client_in)? {
        let head = Head::parse(&raw_head)?;
        let mut parts = head.start_line.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let path = target.split('?').next().unwrap_or_default().to_string();
        let range = head.header("range").map(str::to_string);
        let req_framing = http::request_framing(&head.headers)?;

        let canned = shared.canned.lock().unwrap().get(&path).cloned();
        if let Some(canned) = canned.filter(|_| method == "GET" || method == "HEAD") {
            relay_body(&mut client_in, &mut io::sink(), req_framing, None)?;
            let mut out = format!("HTTP/1.1 {} Canned\r\n", canned.status);
            for (name, value) in &canned.headers {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            out.push_str(&format!("Content-Length: {}\r\n\r\n", canned.body.len()));
            client_out.write_all(out.as_bytes())?;
            let body: &[u8] = if method == "HEAD" { &[] } else { &canned.body };
            client_out.write_all(body)?;
            record(shared, &method, &path, range, canned.status, body.len() as u64, false);
            continue;
        }

        if upstream.is_none() {
            let conn = TcpStream::connect(&shared.upstream)?;
            conn.set_read_timeout(Some(http::IO_TIMEOUT))?;
            conn.set_nodelay(true)?;
            upstream = Some((BufReader::new(conn.try_clone()?), conn));
        }
        let (up_in, up_out) = upstream.as_mut().unwrap();
        up_out.write_all(&raw_head)?;
        relay_body(&mut client_in, up_out, req_framing, None)?;

        // The response, after any 1xx interim ones.
        let (resp_raw, resp_head, status) = loop {
            let Some(raw) = http::read_head(up_in)? else {
                let _ = client_out.shutdown(Shutdown::Both);
                return Ok(());
            };
            let parsed = Head::parse(&raw)?;
            let status = parsed.status()?;
            if (100..200).contains(&status) && status != 101 {
                client_out.write_all(&raw)?;
                continue;
            }
            break (raw, parsed, status);
        };
        client_out.write_all(&resp_raw)?;
        let framing = http::response_framing(&method, status, &resp_head.headers)?;

        let digest = blob_digest(&method, &path).filter(|_| status == 200 || status == 206);
        let cut_here = matches!(framing, Framing::Length(_))
            && digest.is_some_and(|digest| match shared.policy {
                CutPolicy::Never => false,
                CutPolicy::Always => true,
                CutPolicy::OncePerBlob => shared.cut_blobs.lock().unwrap().insert(digest.to_string()),
            });
        let limit = cut_here.then_some(shared.cut_after);
        let (sent, complete) = relay_body(up_in, &mut client_out, framing, limit)?;
        client_out.flush()?;
        record(shared, &method, &path, range, status, sent, cut_here);
        if cut_here {
            let _ = client_out.shutdown(Shutdown::Both);
            let _ = up_out.shutdown(Shutdown::Both);
            return Ok(());
        }
        let closing = resp_head.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if !complete || closing || framing == Framing::UntilClose {
            let _ = client_out.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    Ok(())
}

fn record(shared: &Shared, method: &str, path: &str, range: Option<String>, status: u16, body_bytes: u64, cut: bool) {
    shared.records.lock().unwrap().push(ProxyRecord {
        method: method.to_string(),
        path: path.to_string(),
        range,
        status,
        body_bytes,
        cut,
    });
}

/// Copies one message body. With `limit`, copies at most that many bytes of
/// a `Length` body. Returns the body bytes copied and whether the body was
/// complete (an upstream that closes early, as the registry does with its
/// 416 answers, leaves it incomplete).
fn relay_body(
    from: &mut impl BufRead,
    to: &mut dyn Write,
    framing: Framing,
    limit: Option<u64>,
) -> io::Result<(u64, bool)> {
    match framing {
        Framing::Empty => Ok((0, true)),
        Framing::Length(len) => {
            let want = limit.map_or(len, |l| l.min(len));
            let copied = io::copy(&mut from.take(want), to)?;
            Ok((copied, copied == len))
        }
        Framing::Chunked => {
            let mut counter = CountingSink(0);
            http::copy_chunked(from, to, &mut counter)?;
            Ok((counter.0, true))
        }
        Framing::UntilClose => Ok((io::copy(from, to)?, false)),
    }
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
