//! A minimal blocking HTTP/1.1 client (one request per connection), plus the
//! message-framing helpers that the cut proxy shares with it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a test waits on a silent socket before giving up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names as sent; look them up with [`Response::header`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `addr` ("127.0.0.1:PORT") and reads the whole
/// response. `target` is the path and query ("/v2/"). A `Content-Length` is
/// added when there is a body (or the method is PUT/POST/PATCH), and
/// `Connection: close`. A body shorter than its `Content-Length` (a cut
/// connection) is an `UnexpectedEof` error whose message says how many bytes
/// arrived.
pub fn request(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // A server may answer (and close) before it has read a large body, e.g.
    // the registry's 4 MiB manifest limit: then the answer matters, not the
    // failed write.
    let sent = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
    match read_response(&mut BufReader::new(stream), method) {
        Ok(response) => Ok(response),
        Err(err) => Err(sent.err().unwrap_or(err)),
    }
}

fn read_response(reader: &mut impl BufRead, method: &str) -> io::Result<Response> {
    loop {
        let raw = read_head(reader)?.ok_or_else(|| eof("connection closed before a response"))?;
        let head = Head::parse(&raw)?;
        let status = head.status()?;
        if (100..200).contains(&status) {
            continue; // 100 Continue and friends: the real answer follows
        }
        let mut body = Vec::new();
        match response_framing(method, status, &head.headers)? {
            Framing::Empty => {}
            Framing::Length(len) => {
                reader.take(len).read_to_end(&mut body)?;
                if (body.len() as u64) < len {
                    return Err(eof(&format!("response body cut after {} of {len} bytes", body.len())));
                }
            }
            Framing::Chunked => copy_chunked(reader, &mut io::sink(), &mut body)?,
            Framing::UntilClose => {
                reader.read_to_end(&mut body)?;
            }
        }
        return Ok(Response { status, headers: head.headers, body });
    }
}

pub fn eof(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_string())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The first header of that name (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Reads a message head (start line and headers, through the empty line),
/// returning its raw bytes; `None` on a clean end of stream before any byte.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut raw = Vec::new();
    loop {
        let start = raw.len();
        let n = reader.read_until(b'\n', &mut raw)?;
        if n == 0 {
            return if raw.is_empty() { Ok(None) } else { Err(eof("connection closed inside a message head")) };
        }
        if raw.len() > MAX_HEAD {
            return Err(invalid("message head too large".into()));
        }
        let line = &raw[start..];
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                raw.clear(); // tolerate stray empty lines between messages
                continue;
            }
            return Ok(Some(raw));
        }
    }
}

/// A parsed message head.
pub struct Head {
    pub start_line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(raw).map_err(|_| invalid("message head is not UTF-8".into()))?;
        let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
        let start_line = lines.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Head { start_line, headers })
    }

    /// The status of a response head.
    pub fn status(&self) -> io::Result<u16> {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {:?}", self.start_line)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn declared_framing(headers: &[(String, String)]) -> io::Result<Option<Framing>> {
    if header(headers, "transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        return Ok(Some(Framing::Chunked));
    }
    match header(headers, "content-length") {
        Some(len) => {
            len.parse().map(|n| Some(Framing::Length(n))).map_err(|_| invalid(format!("bad Content-Length {len:?}")))
        }
        None => Ok(None),
    }
}

pub fn request_framing(headers: &[(String, String)]) -> io::Result<Framing> {
    Ok(declared_framing(headers)?.unwrap_or(Framing::Empty))
}

pub fn response_framing(method: &str, status: u16, headers: &[(String, String)]) -> io::Result<Framing> {
    if method.eq_ignore_ascii_case("HEAD") || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    Ok(declared_framing(headers)?.unwrap_or(Framing::UntilClose))
}

/// Reads a chunked body, writing the raw encoding to `raw` and the decoded
/// data to `data`.
pub fn copy_chunked(reader: &mut impl BufRead, raw: &mut dyn Write, data: &mut dyn Write) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(eof("connection closed inside a chunked body"));
        }
        raw.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    return Err(eof("connection closed inside chunked trailers"));
                }
                raw.write_all(&line)?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
        }
        let mut chunk = Vec::new();
        reader.take(size).read_to_end(&mut chunk)?;
        if (chunk.len() as u64) < size {
            return Err(eof("connection closed inside a chunk"));
        }
        raw.write_all(&chunk)?;
        data.write_all(&chunk)?;
        line.clear();
        reader.read_until(b'\n', &mut line)?; // the chunk's CRLF
        raw.write_all(&line)?;
    }
}

/// Standard base64 (with padding), for `Authorization: Basic`.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The value of an `Authorization` header for HTTP basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}
