//! The scrape endpoint: a small HTTP/1.1 server (GET and HEAD, one request per connection) on its own
//! threads, never on the FUSE workers. `/metrics` answers in OpenMetrics when the scraper asks for it
//! (a Prometheus server does) and in the Prometheus text format otherwise (curl, promtool). Requests
//! are bounded in size, time and number, since the port may be reachable from the node's network.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::exporter::Exporter;

/// Connections served at once; more are closed at once (a scraper retries at its next interval).
const MAX_CONNECTIONS: usize = 8;
/// How long a connection may last from accept, request and answer included: a client trickling bytes
/// cannot hold a slot longer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// How long an encoding is served again: scrapes in a loop cost one encoding a second, not one each.
const ENCODING_REUSED_FOR: Duration = Duration::from_secs(1);
/// The most a request's line and headers may take.
const MAX_REQUEST_BYTES: usize = 16 << 10;
/// How often binding is tried again when the address is taken (a predecessor still exiting).
const BIND_RETRY: Duration = Duration::from_secs(10);

/// The Content-Type of OpenMetrics text.
const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `exporter` at `address` from a background thread, binding now or, while the address is
/// taken, every [`BIND_RETRY`]: the daemon's files never wait on its metrics.
pub fn spawn(address: SocketAddr, exporter: Arc<Exporter>) -> io::Result<()> {
    let listener = TcpListener::bind(address);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let listener = match listener {
                Ok(listener) => listener,
                Err(e) => {
                    log::error!(
                        "cannot serve metrics on {address}: {e}; trying again every {} s",
                        BIND_RETRY.as_secs()
                    );
                    loop {
                        std::thread::sleep(BIND_RETRY);
                        if let Ok(listener) = TcpListener::bind(address) {
                            break listener;
                        }
                    }
                }
            };
            let bound = listener.local_addr().map_or(address, |a| a);
            log::info!("serving metrics on http://{bound}/metrics");
            accept(&listener, &exporter);
        })
        .map(|_| ())
}

/// A connection slot, given back when dropped (also if answering panicked).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Slot> {
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(Arc::clone(active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept(listener: &TcpListener, exporter: &Arc<Exporter>) {
    let active = Arc::new(AtomicUsize::new(0));
    let encodings = Arc::new(Encodings::default());
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // EMFILE and the like: wait rather than spin.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let Some(slot) = Slot::take(&active) else {
            continue;
        };
        let exporter = Arc::clone(exporter);
        let encodings = Arc::clone(&encodings);
        let _ = std::thread::Builder::new()
            .name("metrics scrape".into())
            .spawn(move || {
                let _slot = slot;
                let deadline = Instant::now() + CONNECTION_DEADLINE;
                if let Err(e) = answer(stream, &exporter, &encodings, deadline) {
                    log::debug!("metrics connection: {e}");
                }
            });
    }
}

/// An encoding and when it was made.
type Encoded = (Instant, Arc<String>);

/// The last encoding in each format (0.0.4 text, OpenMetrics), served again for
/// [`ENCODING_REUSED_FOR`].
#[derive(Default)]
struct Encodings {
    last: Mutex<[Option<Encoded>; 2]>,
}

impl Encodings {
    fn get(&self, exporter: &Exporter, openmetrics: bool) -> Result<Arc<String>, std::fmt::Error> {
        let mut last = self.last.lock();
        let slot = &mut last[usize::from(openmetrics)];
        if let Some((at, text)) = slot.as_ref() {
            if at.elapsed() < ENCODING_REUSED_FOR {
                return Ok(Arc::clone(text));
            }
        }
        let text = Arc::new(exporter.encode(openmetrics)?);
        *slot = Some((Instant::now(), Arc::clone(&text)));
        Ok(text)
    }
}

/// The time left before `deadline`, as a socket timeout; an error once it passed.
fn time_left(deadline: Instant) -> io::Result<Option<Duration>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection deadline",
        ));
    }
    Ok(Some(left))
}

/// Reads one request from `stream` and answers it, all before `deadline`.
fn answer(
    mut stream: TcpStream,
    exporter: &Exporter,
    encodings: &Encodings,
    deadline: Instant,
) -> io::Result<()> {
    let head = read_head(&mut stream, deadline)?;
    stream.set_write_timeout(time_left(deadline)?)?;
    let Some(head) = head else {
        return respond(
            &mut stream,
            431,
            "text/plain",
            b"request too large\n",
            false,
        );
    };
    let request = Request::parse(&head);
    let Some(request) = request else {
        return respond(&mut stream, 400, "text/plain", b"bad request\n", false);
    };
    let head_only = request.method == "HEAD";
    if request.method != "GET" && !head_only {
        return respond(&mut stream, 405, "text/plain", b"GET only\n", false);
    }
    match request.path {
        "/metrics" => {
            let openmetrics = request.accept.contains("application/openmetrics-text");
            stream.set_write_timeout(time_left(deadline)?)?;
            match encodings.get(exporter, openmetrics) {
                Ok(text) => {
                    let content_type = if openmetrics {
                        OPENMETRICS_TYPE
                    } else {
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
                    };
                    respond(&mut stream, 200, content_type, text.as_bytes(), head_only)
                }
                Err(_) => respond(&mut stream, 500, "text/plain", b"encoding failed\n", false),
            }
        }
        "/" => respond(
            &mut stream,
            200,
            "text/plain; charset=utf-8",
            b"vprocd: metrics at /metrics\n",
            head_only,
        ),
        _ => respond(&mut stream, 404, "text/plain", b"not found\n", head_only),
    }
}

/// The request's line and headers, up to the empty line, read before `deadline`; `None` when they
/// exceed the limit.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Where the search for the end resumes: only new bytes (and 3 before them) are looked at.
    let mut searched: usize = 0;
    loop {
        let tail = &head[searched.saturating_sub(3)..];
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        searched = head.len();
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
        stream.set_read_timeout(time_left(deadline)?)?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

/// What the server looks at in a request.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// Without the query string.
    path: &'a str,
    /// The Accept header, lower case names kept as sent ("" when absent).
    accept: &'a str,
}

impl<'a> Request<'a> {
    fn parse(head: &'a str) -> Option<Request<'a>> {
        let mut lines = head.lines();
        let mut parts = lines.next()?.split_whitespace();
        let method = parts.next()?;
        let target = parts.next()?;
        if !parts.next()?.starts_with("HTTP/") {
            return None;
        }
        let path = target.split('?').next().unwrap_or(target);
        let accept = lines
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
            .map_or("", |(_, value)| value.trim());
        Some(Request {
            method,
            path,
            accept,
        })
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_state() -> super::super::exporter::NodeState {
        super::super::exporter::NodeState {
            report: crate::health::Health::default().report(
                crate::reader::Occupancy {
                    readers: 0,
                    reader_capacity: 1,
                    pid_namespaces: 0,
                    usage_cgroups: 0,
                    stat_history: 0,
                    load_cgroups: 0,
                },
                crate::health::Held::default(),
            ),
            caches: Vec::new(),
            containers: 0,
            views_enabled: true,
        }
    }

    #[test]
    fn a_scrape_request_is_read_with_its_accept_header() {
        let head = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nACCEPT: application/openmetrics-text;version=1.0.0\r\n\r\n";
        assert_eq!(
            Request::parse(head),
            Some(Request {
                method: "GET",
                path: "/metrics",
                accept: "application/openmetrics-text;version=1.0.0",
            })
        );
        assert_eq!(
            Request::parse("GET / HTTP/1.0\n\n").map(|r| r.accept),
            Some("")
        );
        assert_eq!(Request::parse("GET /metrics\r\n\r\n"), None);
        assert_eq!(Request::parse(""), None);
    }

    #[test]
    fn the_server_answers_scrapes_and_refuses_the_rest() {
        let metrics = Arc::new(super::super::Metrics::default());
        let exporter = Arc::new(Exporter::new(metrics, Box::new(empty_state)));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || accept(&listener, &exporter));
        let get = |request: &str| {
            let mut stream = TcpStream::connect(address).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let text = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: text/plain; version=0.0.4"),
            "{text}"
        );
        assert!(text.contains("vproc_containers 0"), "{text}");
        let open = get("GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n");
        assert!(open.contains("application/openmetrics-text"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(get("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(64 << 10)
        );
        let mut stream = TcpStream::connect(address).unwrap();
        // The server answers 431 and closes before reading it all: the client may see a reset.
        let _ = stream.write_all(huge.as_bytes());
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
        assert!(get("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn clients_holding_every_slot_are_dropped_at_the_deadline() {
        let metrics = Arc::new(super::super::Metrics::default());
        let exporter = Arc::new(Exporter::new(metrics, Box::new(empty_state)));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || accept(&listener, &exporter));
        // Every slot taken by a client that sends a byte now and then and never ends its request.
        let started = Instant::now();
        let trickling: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut stream = TcpStream::connect(address).unwrap();
                stream.write_all(b"G").unwrap();
                stream
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        for mut stream in &trickling {
            let _ = stream.write_all(b"E");
        }
        // A scrape is answered once the deadline has freed the slots.
        let answer = loop {
            let mut stream = TcpStream::connect(address).unwrap();
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if !answer.is_empty() {
                break answer;
            }
            assert!(
                started.elapsed() < CONNECTION_DEADLINE * 4,
                "the slots were never freed"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(started.elapsed() >= CONNECTION_DEADLINE / 2);
    }
}
