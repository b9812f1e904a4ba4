//! A local stand-in for the Hub, for tests and benchmarks: two HTTP/1.1 listeners on
//! 127.0.0.1 ephemeral ports, a "hub" (revision and tree APIs with pagination, `resolve/` with
//! the Hub's headers, LFS files redirected to the second host) and a "cdn" (content-addressed
//! blobs, `Range`, and a 400 for any request carrying `Authorization`, as signed-URL storage
//! does). Faults are injected per test: dropped connections mid-body, 429 / 503, corrupted and
//! truncated bodies, pagination links pointing at the origin host, a token requirement.
//! Every request is logged for assertions.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::download::git_blob_id;
use crate::repo::unquote;

#[derive(Clone)]
pub struct MockFile {
    pub path: String,
    pub data: Arc<Vec<u8>>,
    /// Stored in LFS: resolve answers 302 to the CDN with X-Linked-Etag = sha256.
    pub lfs: bool,
    sha: String,
}

impl MockFile {
    pub fn new(path: &str, data: Vec<u8>, lfs: bool) -> Self {
        let sha = hex::encode(Sha256::digest(&data));
        MockFile { path: path.to_string(), data: Arc::new(data), lfs, sha }
    }
    pub fn sha256(&self) -> String {
        self.sha.clone()
    }
}

#[derive(Clone)]
pub struct MockRepo {
    /// "model" or "dataset".
    pub kind: String,
    pub id: String,
    pub commit: String,
    pub branch: String,
    pub files: Vec<MockFile>,
}

/// Faults; counters are "how many more times".
#[derive(Default)]
pub struct Faults {
    /// Entries per tree page (0 = 1000).
    pub page_size: usize,
    /// `Link` headers point at https://huggingface.co instead of this server.
    pub origin_links: bool,
    /// Bearer token the hub requires (401 without it, 403 with a wrong one).
    pub token: Option<String>,
    /// File-content GETs answered with this status (and `Retry-After: 0`) first.
    pub fail_status: Mutex<Vec<u16>>,
    /// API (revision / tree) GETs answered with this status first.
    pub api_fail_status: Mutex<Vec<u16>>,
    /// File bodies cut after half their bytes (connection closed).
    pub drop_mid_body: AtomicUsize,
    /// File bodies with one byte flipped.
    pub corrupt_bodies: AtomicUsize,
    /// File bodies that honestly declare and send fewer bytes than asked.
    pub truncate_bodies: AtomicUsize,
    /// Every file body cut after this many bytes (simulates an interrupted long download).
    pub cut_every_body_after: Mutex<Option<usize>>,
}

#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// "hub" or "cdn".
    pub host: &'static str,
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

struct State {
    repos: Vec<MockRepo>,
    faults: Faults,
    hub_url: String,
    cdn_url: String,
    log: Mutex<Vec<LoggedRequest>>,
    stop: AtomicBool,
}

pub struct MockHub {
    state: Arc<State>,
    addrs: Vec<std::net::SocketAddr>,
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

fn take_status(list: &Mutex<Vec<u16>>) -> Option<u16> {
    let mut l = list.lock().unwrap();
    (!l.is_empty()).then(|| l.remove(0))
}

impl MockHub {
    pub fn start(repos: Vec<MockRepo>, faults: Faults) -> MockHub {
        let hub = TcpListener::bind("127.0.0.1:0").expect("bind hub");
        let cdn = TcpListener::bind("127.0.0.1:0").expect("bind cdn");
        let (ha, ca) = (hub.local_addr().unwrap(), cdn.local_addr().unwrap());
        let state = Arc::new(State {
            repos,
            faults,
            hub_url: format!("http://{ha}"),
            cdn_url: format!("http://{ca}"),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        for (listener, host) in [(hub, "hub"), (cdn, "cdn")] {
            let st = state.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = conn {
                        let st = st.clone();
                        std::thread::spawn(move || serve_connection(st, stream, host));
                    }
                }
            });
        }
        MockHub { state, addrs: vec![ha, ca] }
    }

    /// The endpoint to put in HF_ENDPOINT.
    pub fn endpoint(&self) -> String {
        self.state.hub_url.clone()
    }
    pub fn cdn_url(&self) -> String {
        self.state.cdn_url.clone()
    }
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.log.lock().unwrap().clone()
    }
    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for a in &self.addrs {
            let _ = TcpStream::connect_timeout(a, Duration::from_millis(200));
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Request { method, target, headers })
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    /// A slice of a file: (data, start, end), with faults applied while sending.
    File(Arc<Vec<u8>>, usize, usize),
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn simple(status: u16, headers: Vec<(String, String)>, body: &str) -> Reply {
    Reply { status, headers, body: Body::Bytes(body.as_bytes().to_vec()) }
}

fn error(status: u16, code: &str, message: &str) -> Reply {
    simple(status, vec![("X-Error-Code".into(), code.into()), ("X-Error-Message".into(), message.into())], message)
}

fn serve_connection(st: Arc<State>, stream: TcpStream, host: &'static str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut out = stream;
    while let Some(req) = read_request(&mut reader) {
        st.log.lock().unwrap().push(LoggedRequest {
            host,
            method: req.method.clone(),
            target: req.target.clone(),
            range: req.headers.get("range").cloned(),
            authorization: req.headers.get("authorization").cloned(),
        });
        let reply = if host == "hub" { hub_reply(&st, &req) } else { cdn_reply(&st, &req) };
        let head_only = req.method == "HEAD";
        if !send(&st, &mut out, reply, head_only) {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        if req.headers.get("connection").map(|c| c.eq_ignore_ascii_case("close")).unwrap_or(false) {
            return;
        }
    }
}

/// Write a reply; `false` when the connection must be closed (a fault cut it).
fn send(st: &State, out: &mut TcpStream, reply: Reply, head_only: bool) -> bool {
    let f = &st.faults;
    let (mut data_start, data_end, file) = match &reply.body {
        Body::Bytes(b) => (0, b.len(), None),
        Body::File(d, s, e) => (*s, *e, Some(d.clone())),
    };
    let mut len = data_end - data_start;
    let is_content = file.is_some() && !head_only;
    let truncate = is_content && len > 1 && take_one(&f.truncate_bodies);
    if truncate {
        len /= 2;
    }
    let mut headers = reply.headers;
    if let (true, Some(cr)) = (truncate, headers.iter_mut().find(|(k, _)| k == "Content-Range")) {
        // Honest about the shorter range it sends.
        let total = cr.1.rsplit('/').next().unwrap_or("*").to_string();
        cr.1 = format!("bytes {}-{}/{total}", data_start, data_start + len - 1);
    }
    let mut head = format!("HTTP/1.1 {} {}\r\nContent-Length: {len}\r\n", reply.status, reason(reply.status));
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    if head_only {
        return true;
    }
    match file {
        None => {
            if let Body::Bytes(b) = &reply.body {
                return out.write_all(b).is_ok();
            }
            true
        }
        Some(data) => {
            let mut cut = if is_content && len > 1 && take_one(&f.drop_mid_body) { Some(len / 2) } else { None };
            if let Some(n) = *f.cut_every_body_after.lock().unwrap() {
                cut = Some(cut.map_or(n, |c| c.min(n)).min(len));
            }
            let corrupt = is_content && len > 0 && take_one(&f.corrupt_bodies);
            let send_len = cut.unwrap_or(len);
            let end = data_start + send_len;
            let mut first = true;
            while data_start < end {
                let stop = (data_start + (1 << 20)).min(end);
                let ok = if corrupt && first {
                    let mut piece = data[data_start..stop].to_vec();
                    piece[0] ^= 0xff;
                    out.write_all(&piece).is_ok()
                } else {
                    out.write_all(&data[data_start..stop]).is_ok()
                };
                if !ok {
                    return false;
                }
                first = false;
                data_start = stop;
            }
            cut.is_none()
        }
    }
}

/// Serve `data` honouring a single `Range: bytes=a-b` / `bytes=a-`.
fn content(req: &Request, data: &Arc<Vec<u8>>, mut headers: Vec<(String, String)>) -> Reply {
    let len = data.len();
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    if let Some(range) = req.headers.get("range") {
        let spec = range.trim().strip_prefix("bytes=").unwrap_or("");
        let (a, b) = spec.split_once('-').unwrap_or(("", ""));
        let start: Option<usize> = a.trim().parse().ok();
        let end: Option<usize> = if b.trim().is_empty() { Some(len.saturating_sub(1)) } else { b.trim().parse().ok() };
        match (start, end) {
            (Some(s), Some(e)) if s < len && s <= e => {
                let e = e.min(len - 1);
                headers.push(("Content-Range".into(), format!("bytes {s}-{e}/{len}")));
                return Reply { status: 206, headers, body: Body::File(data.clone(), s, e + 1) };
            }
            _ => {
                headers.push(("Content-Range".into(), format!("bytes */{len}")));
                return simple(416, headers, "range not satisfiable");
            }
        }
    }
    Reply { status: 200, headers, body: Body::File(data.clone(), 0, len) }
}

fn authorized(st: &State, req: &Request) -> Result<(), Reply> {
    let Some(token) = &st.faults.token else { return Ok(()) };
    match req.headers.get("authorization") {
        None => Err(error(401, "RepoNotFound", "Invalid username or password.")),
        Some(v) if *v == format!("Bearer {token}") => Ok(()),
        Some(_) => Err(error(403, "GatedRepo", "Access to this repo is restricted.")),
    }
}

/// `[datasets/]org/name/rest` → (kind, id, rest)
fn split_repo(path: &str, api: bool) -> Option<(String, String, String)> {
    let (kind, rest) = if api {
        let (k, r) = path.split_once('/')?;
        (k.strip_suffix('s')?.to_string(), r)
    } else if let Some(r) = path.strip_prefix("datasets/") {
        ("dataset".to_string(), r)
    } else {
        ("model".to_string(), path)
    };
    let mut it = rest.splitn(3, '/');
    let org = it.next()?;
    let name = it.next()?;
    Some((kind, format!("{org}/{name}"), it.next().unwrap_or("").to_string()))
}

fn find_repo<'a>(st: &'a State, kind: &str, id: &str) -> Option<&'a MockRepo> {
    st.repos.iter().find(|r| r.kind == kind && r.id == id)
}

fn rev_ok(repo: &MockRepo, rev: &str) -> bool {
    rev == repo.branch || rev == repo.commit
}

fn hub_reply(st: &State, req: &Request) -> Reply {
    if let Err(r) = authorized(st, req) {
        return r;
    }
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let path = path.trim_start_matches('/');
    if let Some(api) = path.strip_prefix("api/") {
        if let Some(status) = take_status(&st.faults.api_fail_status) {
            return simple(status, vec![("Retry-After".into(), "0".into())], "try again");
        }
        let Some((kind, id, rest)) = split_repo(api, true) else { return error(404, "NotFound", "bad api path") };
        let Some(repo) = find_repo(st, &kind, &id) else { return error(404, "RepoNotFound", "Repository not found") };
        let json = |v: serde_json::Value| simple(200, vec![("Content-Type".into(), "application/json".into())], &v.to_string());
        if let Some(rev) = rest.strip_prefix("revision/") {
            if !rev_ok(repo, &unquote(rev)) {
                return error(404, "RevisionNotFound", "Invalid rev id");
            }
            let siblings: Vec<_> = repo.files.iter().map(|f| serde_json::json!({"rfilename": f.path})).collect();
            return json(serde_json::json!({"id": repo.id, "_id": "mock", "sha": repo.commit, "private": st.faults.token.is_some(), "siblings": siblings}));
        }
        if let Some(tree) = rest.strip_prefix("tree/") {
            let (rev, sub) = tree.split_once('/').unwrap_or((tree, ""));
            if !rev_ok(repo, &unquote(rev)) {
                return error(404, "RevisionNotFound", "Invalid rev id");
            }
            let sub = unquote(sub);
            let recursive = query.split('&').any(|kv| kv.eq_ignore_ascii_case("recursive=true"));
            let cursor: usize = query.split('&').find_map(|kv| kv.strip_prefix("cursor=")).and_then(|c| c.parse().ok()).unwrap_or(0);
            let mut entries: Vec<serde_json::Value> = Vec::new();
            let mut dirs: Vec<String> = Vec::new();
            let mut files: Vec<&MockFile> = repo.files.iter().collect();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            for f in files {
                let rel = if sub.is_empty() { f.path.as_str() } else { match f.path.strip_prefix(&format!("{sub}/")) { Some(r) => r, None => continue } };
                let parts: Vec<&str> = rel.split('/').collect();
                for i in 1..parts.len() {
                    let d = parts[..i].join("/");
                    let full = if sub.is_empty() { d.clone() } else { format!("{sub}/{d}") };
                    if (recursive || i == 1) && !dirs.contains(&full) {
                        dirs.push(full.clone());
                        entries.push(serde_json::json!({"type": "directory", "oid": "0".repeat(40), "size": 0, "path": full}));
                    }
                }
                if !recursive && parts.len() > 1 {
                    continue;
                }
                let mut e = serde_json::json!({"type": "file", "size": f.data.len(), "path": f.path});
                if f.lfs {
                    let pointer = format!("version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n", f.sha256(), f.data.len());
                    e["oid"] = git_blob_id(pointer.as_bytes()).into();
                    e["lfs"] = serde_json::json!({"oid": f.sha256(), "size": f.data.len(), "pointerSize": pointer.len()});
                } else {
                    e["oid"] = git_blob_id(&f.data).into();
                }
                entries.push(e);
            }
            let page = if st.faults.page_size == 0 { 1000 } else { st.faults.page_size };
            let end = (cursor + page).min(entries.len());
            let mut headers = vec![("Content-Type".into(), "application/json".into())];
            if end < entries.len() {
                let base = if st.faults.origin_links { "https://huggingface.co".to_string() } else { st.hub_url.clone() };
                let mut q: Vec<&str> = query.split('&').filter(|kv| !kv.starts_with("cursor=") && !kv.is_empty()).collect();
                let c = format!("cursor={end}");
                q.push(&c);
                headers.push(("Link".into(), format!("<{base}/{path}?{}>; rel=\"next\"", q.join("&"))));
            }
            let body = serde_json::Value::Array(entries[cursor.min(entries.len())..end].to_vec()).to_string();
            return simple(200, headers, &body);
        }
        return error(404, "NotFound", "unknown api");
    }
    // resolve
    let Some((kind, id, rest)) = split_repo(path, false) else { return error(404, "NotFound", "bad path") };
    let Some(rest) = rest.strip_prefix("resolve/") else { return error(404, "NotFound", "unknown path") };
    let Some(repo) = find_repo(st, &kind, &id) else { return error(404, "RepoNotFound", "Repository not found") };
    let (rev, file) = rest.split_once('/').unwrap_or((rest, ""));
    if !rev_ok(repo, &unquote(rev)) {
        return error(404, "RevisionNotFound", "Invalid rev id");
    }
    let file_path = unquote(file);
    let Some(f) = repo.files.iter().find(|f| f.path == file_path) else {
        return error(404, "EntryNotFound", &format!("{file_path} does not exist on \"{rev}\""));
    };
    let mut headers = vec![("X-Repo-Commit".to_string(), repo.commit.clone())];
    if f.lfs {
        headers.push(("X-Linked-Etag".into(), format!("\"{}\"", f.sha256())));
        headers.push(("X-Linked-Size".into(), f.data.len().to_string()));
        headers.push(("ETag".into(), format!("\"{}\"", git_blob_id(b"pointer"))));
        headers.push(("Location".into(), format!("{}/blobs/{}?X-Amz-Signature=mock", st.cdn_url, f.sha256())));
        return simple(302, headers, "");
    }
    if req.method == "GET" {
        if let Some(status) = take_status(&st.faults.fail_status) {
            return simple(status, vec![("Retry-After".into(), "0".into())], "try again");
        }
    }
    headers.push(("ETag".into(), format!("\"{}\"", git_blob_id(&f.data))));
    content(req, &f.data, headers)
}

fn cdn_reply(st: &State, req: &Request) -> Reply {
    if req.headers.contains_key("authorization") {
        return simple(400, vec![], "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter...");
    }
    let path = req.target.split('?').next().unwrap_or("");
    let Some(sha) = path.strip_prefix("/blobs/") else { return simple(404, vec![], "no such key") };
    let Some(f) = st.repos.iter().flat_map(|r| r.files.iter()).find(|f| f.lfs && f.sha256() == sha) else {
        return simple(404, vec![], "no such key");
    };
    if req.method == "GET" {
        if let Some(status) = take_status(&st.faults.fail_status) {
            return simple(status, vec![("Retry-After".into(), "0".into())], "slow down");
        }
    }
    content(req, &f.data, vec![("ETag".into(), format!("\"{sha}\""))])
}

/// Deterministic pseudo-random bytes (xorshift), so test files are incompressible and distinct.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
