//! The one client of the commands that talk to a server's API (`gantry login`, `pipeline`, `job`,
//! `project`, `agent list|revoke`, `env --project`).
//!
//! Where the server is and the token come from `--server`/`--token`, else `GANTRY_SERVER` and
//! `GANTRY_TOKEN` (`GANTRY_ADMIN_TOKEN` too, for the token), else the file `gantry login` wrote
//! (`login.json` in the user's config directory, mode 0600). A refused request prints the API's
//! error message and ends the command with [`EXIT_REFUSED`] (a 4xx) or [`EXIT_FAILED`] (no answer,
//! a 5xx), carried up as an [`Exit`] error so that commands can use `?`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use gantry_api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::output::Output;

/// Exit code: the server could not be reached or failed.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code: the server refused the request (bad token, bad input, unknown id).
pub(crate) const EXIT_REFUSED: u8 = 2;

/// How long a request (not a followed stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server is and the token.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The server's URL (default: `GANTRY_SERVER`, else `gantry login`'s).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The API token: the admin token or a project token (default: `GANTRY_TOKEN`, else
    /// `GANTRY_ADMIN_TOKEN`, else `gantry login`'s).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

impl ServerArgs {
    /// Whether `--server` is given.
    pub(crate) fn has_server(&self) -> bool {
        self.server.is_some()
    }
}

/// What every read command takes: the server, and the output format.
#[derive(Args, Clone)]
pub struct Remote {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Output format: a table, or the API's JSON.
    #[arg(long, value_enum, default_value = "human")]
    pub output: Output,
}

/// A command's end with this exit code, its message already printed.
#[derive(Debug)]
pub(crate) struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Runs a command: its exit code is 0, or the [`Exit`] it ended with. A closed stdout
/// (`gantry job log 7 --follow | head`) ends it quietly, as ripgrep does.
pub(crate) fn exit_code(result: Result<()>) -> Result<u8> {
    match result {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => Ok(*code),
            None if broken_pipe(&e) => Ok(0),
            None => Err(e),
        },
    }
}

/// Whether `e` is a write to a stdout whose reader went away.
pub(crate) fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints `gantry: MESSAGE` and ends the command with `code`.
pub(crate) fn fail(code: u8, message: &str) -> anyhow::Error {
    eprintln!("gantry: {message}");
    Exit(code).into()
}

/// What `gantry login` keeps.
#[derive(Serialize, Deserialize)]
struct Login {
    server: String,
    token: String,
}

/// `login.json` in the user's config directory (`XDG_CONFIG_HOME`, else `~/.config`).
fn login_file() -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(dir.join("gantry").join("login.json"))
}

fn saved_login() -> Result<Option<Login>> {
    let Some(path) = login_file() else {
        return Ok(None);
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("cannot read {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A connection to one server, with its token.
pub(crate) struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client for the server and token of `args`, the environment or the saved login.
    pub(crate) fn new(args: &ServerArgs) -> Result<Client> {
        let mut server = args.server.clone().or_else(|| env("GANTRY_SERVER"));
        let from_env = env("GANTRY_TOKEN").or_else(|| env("GANTRY_ADMIN_TOKEN"));
        // A token from the environment (set for some server, maybe another one) goes only to a
        // server named here too, never to the saved login's; `--token` is the user's choice.
        if args.token.is_none() && from_env.is_some() && server.is_none() {
            return Err(fail(
                EXIT_REFUSED,
                "a token from the environment needs its server: give --server URL or set \
                 GANTRY_SERVER",
            ));
        }
        let mut token = args.token.clone().or(from_env);
        if token.is_none() || server.is_none() {
            if let Some(saved) = saved_login()? {
                // A saved token goes only to the server it was saved for.
                let same = server
                    .as_deref()
                    .is_none_or(|s| s.trim_end_matches('/') == saved.server);
                if same {
                    server.get_or_insert(saved.server);
                    token.get_or_insert(saved.token);
                }
            }
        }
        let Some(server) = server else {
            return Err(fail(
                EXIT_REFUSED,
                "no server: give --server URL, set GANTRY_SERVER, or run `gantry login`",
            ));
        };
        let Some(token) = token else {
            return Err(fail(
                EXIT_REFUSED,
                "no token: give --token TOKEN, set GANTRY_TOKEN, or run `gantry login`",
            ));
        };
        Client::with(&server, &token)
    }

    fn with(server: &str, token: &str) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client {
            rt,
            http,
            base: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request (with `body` as JSON); answers the body of a success.
    pub(crate) fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        Ok(self.send_with_headers(method, path, body)?.1)
    }

    /// [`Client::send`], with the answer's headers.
    fn send_with_headers(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>)> {
        match self.raw(method, path, body)? {
            (status, headers, bytes) if status.is_success() => Ok((headers, bytes)),
            (status, _, bytes) => Err(refused(status, &bytes)),
        }
    }

    /// Sends one request; answers its status, headers and body, or fails when there is no answer.
    fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let url = self.url(path);
        let answer = self.rt.block_on(async {
            let mut req = self
                .http
                .request(method, &url)
                .bearer_auth(&self.token)
                .timeout(REQUEST_TIMEOUT);
            if let Some(body) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body);
            }
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await?.to_vec();
            anyhow::Ok((status, headers, bytes))
        });
        answer.map_err(|e| fail(EXIT_FAILED, &format!("cannot reach {url}: {e:#}")))
    }

    /// `GET path` of a paginated list; says on stderr, in `Output::Human`, when there is a next
    /// page (`X-Next-Page`) and of how many (`X-Total-Pages`).
    pub(crate) fn get_page(&self, path: &str, output: Output) -> Result<Vec<u8>> {
        let (headers, bytes) = self.send_with_headers(reqwest::Method::GET, path, None)?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        if let (Output::Human, Some(next)) = (output, header("x-next-page")) {
            let of = header("x-total-pages").unwrap_or_else(|| "?".into());
            eprintln!("gantry: more on page {next} of {of} (--page {next})");
        }
        Ok(bytes)
    }

    /// `GET path`.
    pub(crate) fn get(&self, path: &str) -> Result<Vec<u8>> {
        self.send(reqwest::Method::GET, path, None)
    }

    /// `POST path` with `body` as JSON (or none).
    pub(crate) fn post(&self, path: &str, body: Option<&impl Serialize>) -> Result<Vec<u8>> {
        let body = body.map(serde_json::to_vec).transpose()?;
        self.send(reqwest::Method::POST, path, body)
    }

    /// `DELETE path`.
    pub(crate) fn delete(&self, path: &str) -> Result<Vec<u8>> {
        self.send(reqwest::Method::DELETE, path, None)
    }

    /// Follows the Server-Sent Events of `path` from byte offset `from`, handing each event's
    /// name and data to `on` until it answers `false` or the stream ends; reconnects (with
    /// `Last-Event-ID`) when the connection drops.
    pub(crate) fn events(
        &self,
        path: &str,
        mut on: impl FnMut(&str, &str) -> Result<bool>,
    ) -> Result<()> {
        let url = self.url(path);
        let mut last_id: Option<String> = None;
        let mut drops = 0;
        self.rt.block_on(async {
            loop {
                let mut req = self
                    .http
                    .get(&url)
                    .bearer_auth(&self.token)
                    .header(reqwest::header::ACCEPT, "text/event-stream");
                if let Some(id) = &last_id {
                    req = req.header("Last-Event-ID", id);
                }
                let mut resp = match req.send().await {
                    Ok(r) => r,
                    Err(e) if drops < 5 => {
                        drops += 1;
                        eprintln!("gantry: {url}: {e:#}; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => return Err(fail(EXIT_FAILED, &format!("cannot reach {url}: {e:#}"))),
                };
                if !resp.status().is_success() {
                    let status = resp.status();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    return Err(refused(status, &bytes));
                }
                let mut parser = SseParser::default();
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            drops = 0;
                            for ev in parser.push(&chunk) {
                                if let Some(id) = ev.id {
                                    last_id = Some(id);
                                }
                                if !on(&ev.event, &ev.data)? {
                                    return Ok(());
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) if drops < 5 => {
                            drops += 1;
                            eprintln!("gantry: {url}: {e:#}; reconnecting");
                            break;
                        }
                        Err(e) => {
                            return Err(fail(EXIT_FAILED, &format!("{url}: {e:#}")));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

/// One Server-Sent Event.
struct SseEvent {
    event: String,
    data: String,
    id: Option<String>,
}

/// Cuts a byte stream into Server-Sent Events (lines `event:`, `data:`, `id:`; a blank line ends
/// an event; comments and other fields are ignored).
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
    id: Option<String>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(SseEvent {
                        event: if self.event.is_empty() {
                            "message".into()
                        } else {
                            std::mem::take(&mut self.event)
                        },
                        data: self.data.join("\n"),
                        id: self.id.take(),
                    });
                }
                self.data.clear();
                self.event.clear();
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_string(),
                "data" => self.data.push(value.to_string()),
                "id" => self.id = Some(value.to_string()),
                _ => {}
            }
        }
        out
    }
}

/// Prints the server's error; answers the [`Exit`] to end with.
fn refused(status: reqwest::StatusCode, bytes: &[u8]) -> anyhow::Error {
    let message = serde_json::from_slice::<ErrorBody>(bytes).map_or_else(
        |_| String::from_utf8_lossy(bytes).trim().to_string(),
        |b| b.error,
    );
    let code = if status.is_client_error() {
        EXIT_REFUSED
    } else {
        EXIT_FAILED
    };
    fail(code, &format!("the server answered {status}: {message}"))
}

/// Reads an answer of the API as `T`.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).context("the server's answer is not what this gantry expects")
}

/// Writes a table: left-aligned columns two spaces apart, no trailing spaces.
pub(crate) fn table(
    out: &mut impl std::io::Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    for r in rows {
        writeln!(out, "{}", line(&mut r.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// Prints one line on stdout.
pub(crate) fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Prints a JSON answer, pretty.
pub(crate) fn print_json(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?,
        Err(_) => out.write_all(bytes)?,
    }
    out.flush()?;
    Ok(())
}

/// Prints the answer as JSON, or as a table of `header` and the rows `rows` makes of it.
pub(crate) fn print<T: DeserializeOwned>(
    output: Output,
    bytes: &[u8],
    header: &[&str],
    rows: impl FnOnce(T) -> Vec<Vec<String>>,
) -> Result<()> {
    if output == Output::Json {
        return print_json(bytes);
    }
    let rows = rows(parse(bytes)?);
    let mut out = std::io::stdout().lock();
    crate::client::table(&mut out, header, &rows)?;
    out.flush()?;
    Ok(())
}

/// `gantry login`'s options.
#[derive(Args)]
pub struct LoginArgs {
    /// The server's URL.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The API token: the admin token or a project token.
    #[arg(long, value_name = "TOKEN")]
    token: String,
}

/// `gantry login`: checks the token against the server, then saves both (mode 0600).
pub fn login(args: &LoginArgs) -> Result<u8> {
    exit_code((|| {
        let client = Client::with(&args.server, &args.token)?;
        // The admin token reads this route, a project token is refused with 403 (it is known),
        // an unknown one gets 401.
        let admin = match client.raw(reqwest::Method::GET, "/api/v1/projects", None)? {
            (status, _, _) if status.is_success() => true,
            (reqwest::StatusCode::FORBIDDEN, _, _) => false,
            (status, _, bytes) => return Err(refused(status, &bytes)),
        };
        let path = login_file().context("no config directory: set HOME or XDG_CONFIG_HOME")?;
        save(
            &path,
            &Login {
                server: args.server.trim_end_matches('/').to_string(),
                token: args.token.clone(),
            },
        )?;
        eprintln!(
            "gantry: logged in to {} with {} token; saved in {}",
            args.server,
            if admin { "the admin" } else { "a project" },
            path.display()
        );
        Ok(())
    })())
}

/// Writes the login file readable by its owner only, through a temporary file.
fn save(path: &std::path::Path, login: &Login) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = path.parent().context("the login file has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(".login.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(login)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: log\nid: 5\ndata: {\"a\"").is_empty());
        let evs = p.push(b":1}\n\n: keep-alive\n\ndata: x\r\ndata: y\r\n\r\n");
        let got: Vec<_> = evs
            .iter()
            .map(|e| (e.event.as_str(), e.data.as_str(), e.id.as_deref()))
            .collect();
        assert_eq!(
            got,
            [("log", "{\"a\":1}", Some("5")), ("message", "x\ny", None)]
        );
    }
}
