//! The HTTP client: one ureq agent (rustls, pooled keep-alive connections) shared by all
//! threads. Redirects are followed here, not by ureq, so the token goes only to the
//! endpoint's own origin and never to a CDN. Statuses are classified: 429 / 5xx / dropped
//! connections are retried with exponential backoff (honouring `Retry-After`); 401 / 403 / 404
//! are final and reported with the Hub's error code.

use std::time::Duration;

use openseek_common::{ExitCode, Failure};
use ureq::http::Response;
use ureq::Body;

use crate::repo::{join_url, origin};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all (first try included) before a transient failure becomes final.
    pub attempts: u32,
    /// First backoff; doubled each retry, with jitter.
    pub base: Duration,
    /// Longest wait between tries (also caps `Retry-After`).
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 10, base: Duration::from_millis(1000), cap: Duration::from_secs(60) }
    }
}

impl RetryPolicy {
    /// Wait before retry number `retry` (0 = first retry).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.cap);
        }
        let exp = self.base.saturating_mul(1u32 << retry.min(16)).min(self.cap);
        // Jitter in [50%, 100%] so parallel workers do not retry in lockstep.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let frac = 0.5 + 0.5 * ((nanos % 1000) as f64 / 1000.0);
        exp.mul_f64(frac)
    }
}

/// Why one try failed.
#[derive(Debug)]
pub enum Problem {
    /// Worth another try: a dropped connection, a timeout, 429, 5xx.
    Transient { reason: String, retry_after: Option<Duration> },
    /// Final: access denied, not found, a malformed answer.
    Fatal(Failure),
}

impl Problem {
    pub fn transient(reason: impl Into<String>) -> Self {
        Problem::Transient { reason: reason.into(), retry_after: None }
    }
}

/// What a HEAD on `resolve/` tells (huggingface_hub's `HfFileMetadata`).
#[derive(Debug, Clone)]
pub struct ResolveMeta {
    pub commit: Option<String>,
    /// `X-Linked-Etag` else `ETag`, normalised (no `W/`, no quotes).
    pub etag: Option<String>,
    /// `X-Linked-Size` else `Content-Length` of a non-redirect answer.
    pub size: Option<u64>,
    /// Where the bytes are: the CDN `Location` of a cross-origin redirect, else the resolve URL.
    pub location: String,
}

pub struct Client {
    agent: ureq::Agent,
    trusted_origin: Option<String>,
    token: Option<String>,
    pub retry: RetryPolicy,
}

/// huggingface_hub's `_normalize_etag`.
pub fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(|s| s.to_string())
}

fn retry_after(resp: &Response<Body>) -> Option<Duration> {
    header(resp, "retry-after").and_then(|v| v.trim().parse::<f64>().ok()).map(|s| Duration::from_secs_f64(s.max(0.0)))
}

/// Classify a non-success status.
pub fn status_problem(resp: &Response<Body>, url: &str) -> Problem {
    let status = resp.status().as_u16();
    let code = header(resp, "x-error-code");
    let msg = header(resp, "x-error-message");
    let detail = match (&code, &msg) {
        (Some(c), Some(m)) => format!(" ({c}: {m})"),
        (Some(c), None) => format!(" ({c})"),
        (None, Some(m)) => format!(" ({m})"),
        (None, None) => String::new(),
    };
    match status {
        401 | 403 => Problem::Fatal(Failure::new(
            ExitCode::Unavailable,
            format!(
                "access denied: HTTP {status}{detail} from {url}; the repo may be private or gated: accept its terms on the Hub \
                 and set HF_TOKEN (or write the token to $HF_HOME/token)"
            ),
        )),
        404 => {
            let what = match code.as_deref() {
                Some("RepoNotFound") => "the repo does not exist (or is private: set HF_TOKEN)",
                Some("RevisionNotFound") => "the revision does not exist",
                Some("EntryNotFound") => "the file does not exist at this revision",
                _ => "not found",
            };
            Problem::Fatal(Failure::new(ExitCode::Unavailable, format!("{what}: HTTP 404{detail} from {url}")))
        }
        408 | 429 | 500..=599 => {
            Problem::Transient { reason: format!("HTTP {status}{detail} from {url}"), retry_after: retry_after(resp) }
        }
        _ => Problem::Fatal(Failure::new(ExitCode::Unavailable, format!("unexpected HTTP {status}{detail} from {url}"))),
    }
}

fn transport_problem(err: ureq::Error, url: &str) -> Problem {
    match err {
        ureq::Error::BadUri(_) | ureq::Error::InvalidProxyUrl | ureq::Error::Http(_) => {
            Problem::Fatal(Failure::usage(format!("bad URL {url}: {err}")))
        }
        other => Problem::transient(format!("{url}: {other}")),
    }
}

impl Client {
    /// `endpoint` is the only origin that receives the token. `connections` sizes the pool.
    pub fn new(endpoint: &str, token: Option<String>, retry: RetryPolicy, connections: usize) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("os-fetch/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .max_idle_connections(4 * connections.max(4))
            .max_idle_connections_per_host(2 * connections.max(4))
            .build();
        Client { agent: config.into(), trusted_origin: origin(endpoint), token, retry }
    }

    /// Is the token sent to `url`? Only to the endpoint's own origin.
    pub fn sends_token_to(&self, url: &str) -> bool {
        self.token.is_some() && origin(url).is_some() && origin(url) == self.trusted_origin
    }

    /// One request, no redirect following.
    pub fn send(&self, method: &str, url: &str, headers: &[(&str, String)]) -> Result<Response<Body>, Problem> {
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        if self.sends_token_to(url) {
            builder = builder.header("Authorization", format!("Bearer {}", self.token.as_deref().unwrap_or("")));
        }
        for (k, v) in headers {
            builder = builder.header(*k, v.as_str());
        }
        let request = builder.body(()).map_err(|e| Problem::Fatal(Failure::usage(format!("bad request for {url}: {e}"))))?;
        self.agent.run(request).map_err(|e| transport_problem(e, url))
    }

    /// A request that follows redirects (up to 10), the token dropped on any other origin.
    /// Returns the final URL with a 2xx answer; other statuses are classified.
    pub fn send_following(&self, method: &str, url: &str, headers: &[(&str, String)]) -> Result<(String, Response<Body>), Problem> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let resp = self.send(method, &url, headers)?;
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                if let Some(loc) = header(&resp, "location") {
                    url = join_url(&url, &loc);
                    continue;
                }
            }
            if (200..300).contains(&status) {
                return Ok((url, resp));
            }
            return Err(status_problem(&resp, &url));
        }
        Err(Problem::Fatal(Failure::new(ExitCode::Unavailable, format!("too many redirects from {url}"))))
    }

    /// Run `attempt` until it succeeds, a fatal problem, or the retry budget is spent.
    pub fn with_retries<T>(&self, what: &str, mut attempt: impl FnMut() -> Result<T, Problem>) -> Result<T, Failure> {
        let mut retry = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Problem::Fatal(f)) => return Err(f),
                Err(Problem::Transient { reason, retry_after }) => {
                    if retry + 1 >= self.retry.attempts {
                        return Err(Failure::new(
                            ExitCode::TempFail,
                            format!("{what}: gave up after {} tries; last error: {reason}", self.retry.attempts),
                        ));
                    }
                    let wait = self.retry.delay(retry, retry_after);
                    log_retry(what, &reason, wait, retry + 1, self.retry.attempts);
                    std::thread::sleep(wait);
                    retry += 1;
                }
            }
        }
    }

    /// GET JSON (following redirects); returns the value and the answer's `Link` header.
    pub fn get_json(&self, url: &str, what: &str) -> Result<(serde_json::Value, Option<String>), Failure> {
        self.with_retries(what, || {
            let (final_url, mut resp) = self.send_following("GET", url, &[("Accept", "application/json".into())])?;
            let link = header(&resp, "link");
            let text = resp
                .body_mut()
                .with_config()
                .limit(256 << 20)
                .read_to_string()
                .map_err(|e| Problem::transient(format!("reading {final_url}: {e}")))?;
            let value = serde_json::from_str(&text).map_err(|e| {
                Problem::Fatal(Failure::data(format!("{final_url} did not answer JSON ({e}): {}", text.chars().take(200).collect::<String>())))
            })?;
            Ok((value, link))
        })
    }

    /// HEAD the resolve URL as huggingface_hub does: follow redirects that stay on the endpoint's
    /// origin, stop at one that leaves it (the CDN); read commit, etag, size and location.
    pub fn head_resolve(&self, url: &str, what: &str) -> Result<ResolveMeta, Failure> {
        self.with_retries(what, || {
            let mut current = url.to_string();
            for _ in 0..10 {
                let resp = self.send("HEAD", &current, &[("Accept-Encoding", "identity".into())])?;
                let status = resp.status().as_u16();
                let location = header(&resp, "location").map(|l| join_url(&current, &l));
                let redirect = (300..400).contains(&status) && location.is_some();
                if !redirect && !(200..300).contains(&status) {
                    return Err(status_problem(&resp, &current));
                }
                if redirect && origin(location.as_deref().unwrap_or("")) == origin(&current) {
                    current = location.unwrap();
                    continue;
                }
                let etag = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag")).map(|e| normalize_etag(&e));
                let size = header(&resp, "x-linked-size")
                    .or_else(|| if redirect { None } else { header(&resp, "content-length") })
                    .and_then(|s| s.trim().parse().ok());
                return Ok(ResolveMeta {
                    commit: header(&resp, "x-repo-commit"),
                    etag,
                    size,
                    location: if redirect { location.unwrap() } else { current },
                });
            }
            Err(Problem::Fatal(Failure::new(ExitCode::Unavailable, format!("too many redirects resolving {url}"))))
        })
    }
}

/// Retries are logged: a Slurm log should show why a fetch was slow.
pub fn log_retry(what: &str, reason: &str, wait: Duration, n: u32, of: u32) {
    eprintln!("os-fetch: {what}: {reason}; retry {n}/{} in {:.1}s", of - 1, wait.as_secs_f64());
}

/// Read a header of a response (public for the downloader).
pub fn response_header(resp: &Response<Body>, name: &str) -> Option<String> {
    header(resp, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_normalisation_and_backoff() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        let p = RetryPolicy { attempts: 5, base: Duration::from_millis(100), cap: Duration::from_millis(500) };
        let d0 = p.delay(0, None);
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100), "{d0:?}");
        assert!(p.delay(10, None) <= Duration::from_millis(500));
        assert_eq!(p.delay(3, Some(Duration::from_secs(0))), Duration::ZERO);
        assert_eq!(p.delay(3, Some(Duration::from_secs(100))), Duration::from_millis(500));
    }

    #[test]
    fn token_goes_only_to_the_endpoint_origin() {
        let c = Client::new("http://127.0.0.1:5000/mirror", Some("t".into()), RetryPolicy::default(), 2);
        assert!(c.sends_token_to("http://127.0.0.1:5000/api/x"));
        assert!(!c.sends_token_to("http://127.0.0.1:5001/blobs/x"));
        assert!(!c.sends_token_to("https://127.0.0.1:5000/api/x"));
        let anon = Client::new("http://127.0.0.1:5000", None, RetryPolicy::default(), 2);
        assert!(!anon.sends_token_to("http://127.0.0.1:5000/api/x"));
    }
}
