//! A thin W3C WebDriver client (JSON over HTTP, on `reqwest`) for the browser tests.
//!
//! Its names and shapes are those of the subset of `fantoccini` the tests used (`Client`,
//! `ClientBuilder`, `Element`, `Locator`, `Key`, `client.wait().for_element(..)`), so a test
//! written against `fantoccini` changes by its `use` lines only. Every command is one HTTP
//! request to the driver; an error carries WebDriver's error code and message.
//! Endpoints: <https://www.w3.org/TR/webdriver2/#endpoints>.

// The client mirrors fantoccini's API; each test uses a part of it.
#![allow(dead_code)]

use std::fmt;
use std::ops::{Add, Deref};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, Url};
use serde_json::{Map, Value, json};

/// The key under which WebDriver names an element in JSON.
pub const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A failed WebDriver command: the driver's error code (`no such element`, ...) and message, or
/// `lost` (the driver did not answer) or `not w3c` (an answer of an unexpected shape).
#[derive(Debug, Clone)]
pub struct CmdError {
    /// The WebDriver error code.
    pub error: String,
    /// The driver's message.
    pub message: String,
}

/// A session that could not be made; the same shape as any command's error.
pub type NewSessionError = CmdError;

impl CmdError {
    fn new(error: &str, message: impl Into<String>) -> CmdError {
        CmdError {
            error: error.to_string(),
            message: message.into(),
        }
    }

    fn not_w3c(what: &str, v: &Value) -> CmdError {
        CmdError::new("not w3c", format!("{what}: {v}"))
    }

    /// The element is not on the page.
    pub fn is_no_such_element(&self) -> bool {
        self.error == "no such element"
    }

    /// The element left the page.
    pub fn is_stale_element_reference(&self) -> bool {
        self.error == "stale element reference"
    }

    /// The element cannot be clicked or typed into.
    pub fn is_element_not_interactable(&self) -> bool {
        self.error == "element not interactable"
    }

    /// No alert, confirm or prompt is open.
    pub fn is_no_such_alert(&self) -> bool {
        self.error == "no such alert"
    }

    /// A script threw.
    pub fn is_javascript_error(&self) -> bool {
        self.error == "javascript error"
    }

    /// A page load, script or wait ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.error == "timeout" || self.error == "script timeout" || self.error == "wait timeout"
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

impl std::error::Error for CmdError {}

/// A command's result from the driver's answer: its `value`, or the error it names.
fn answer(ok: bool, body: &str) -> Result<Value, CmdError> {
    let mut v: Value =
        serde_json::from_str(body).map_err(|e| CmdError::new("not w3c", format!("{e}: {body}")))?;
    let value = v.get_mut("value").map(Value::take).unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        let message = value.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(CmdError::new(error, message));
    }
    if !ok {
        return Err(CmdError::not_w3c("an error without a code", &v));
    }
    Ok(value)
}

/// How to find elements.
#[derive(Clone, Copy, Eq, PartialEq, Debug, Hash)]
pub enum Locator<'a> {
    /// A CSS selector.
    Css(&'a str),
    /// An `id` attribute.
    Id(&'a str),
    /// A link's exact text.
    LinkText(&'a str),
    /// An XPath expression.
    XPath(&'a str),
}

impl Locator<'_> {
    /// The body of a Find Element(s) command.
    fn params(self) -> Value {
        let (using, value) = match self {
            Locator::Css(s) => ("css selector", s.to_string()),
            Locator::Id(s) => ("xpath", format!("//*[@id=\"{s}\"]")),
            Locator::LinkText(s) => ("link text", s.to_string()),
            Locator::XPath(s) => ("xpath", s.to_string()),
        };
        json!({"using": using, "value": value})
    }
}

/// Starts a session on a WebDriver server.
#[derive(Default, Clone, Debug)]
pub struct ClientBuilder {
    capabilities: Option<Map<String, Value>>,
}

impl ClientBuilder {
    /// A builder (fantoccini's TLS flavour; a local driver speaks plain HTTP).
    #[allow(clippy::unnecessary_wraps)]
    pub fn rustls() -> std::io::Result<ClientBuilder> {
        Ok(ClientBuilder::default())
    }

    /// A builder (fantoccini's other TLS flavour).
    pub fn native() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The capabilities the session must match.
    pub fn capabilities(&mut self, cap: Map<String, Value>) -> &mut ClientBuilder {
        self.capabilities = Some(cap);
        self
    }

    /// Opens a session on the driver at `webdriver` (`http://127.0.0.1:PORT`). Pages load
    /// fully before a navigation returns, and Chrome speaks W3C, as with fantoccini.
    pub async fn connect(&self, webdriver: &str) -> Result<Client, NewSessionError> {
        let mut cap = self.capabilities.clone().unwrap_or_default();
        cap.entry("pageLoadStrategy").or_insert(json!("normal"));
        if let Some(chrome) = cap
            .entry("goog:chromeOptions")
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            chrome.insert("w3c".into(), json!(true));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| CmdError::new("lost", e.to_string()))?;
        let base = webdriver.trim_end_matches('/');
        let body = json!({"capabilities": {"alwaysMatch": cap, "firstMatch": [{}]}});
        let v = send(&http, Method::POST, &format!("{base}/session"), Some(body)).await?;
        let id = v
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| CmdError::not_w3c("a session without an id", &v))?;
        Ok(Client {
            http,
            session: Arc::from(format!("{base}/session/{id}")),
        })
    }
}

/// One request to the driver; answers the command's value.
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, CmdError> {
    let mut req = http.request(method.clone(), url);
    if method == Method::POST {
        req = req.json(&body.unwrap_or_else(|| json!({})));
    }
    let lost = |e: reqwest::Error| CmdError::new("lost", e.to_string());
    let resp = req.send().await.map_err(lost)?;
    let ok = resp.status().is_success();
    answer(ok, &resp.text().await.map_err(lost)?)
}

/// A browser session. Clones share the session.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// `http://DRIVER/session/ID`.
    session: Arc<str>,
}

impl Client {
    /// Runs the command at `path` (below the session) and answers its value.
    async fn cmd(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CmdError> {
        send(&self.http, method, &format!("{}{path}", self.session), body).await
    }

    async fn get(&self, path: &str) -> Result<Value, CmdError> {
        self.cmd(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, CmdError> {
        self.cmd(Method::POST, path, Some(body)).await
    }

    async fn get_string(&self, path: &str) -> Result<String, CmdError> {
        match self.get(path).await? {
            Value::String(s) => Ok(s),
            v => Err(CmdError::not_w3c(path, &v)),
        }
    }

    /// The session's id.
    #[allow(clippy::unused_async)]
    pub async fn session_id(&self) -> Result<Option<String>, CmdError> {
        Ok(self.session.rsplit('/').next().map(str::to_string))
    }

    /// Ends the session (the browser closes).
    pub async fn close(self) -> Result<(), CmdError> {
        self.cmd(Method::DELETE, "", None).await.map(drop)
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<(), CmdError> {
        self.post("/url", json!({"url": url})).await.map(drop)
    }

    /// The page's URL.
    pub async fn current_url(&self) -> Result<Url, CmdError> {
        let s = self.get_string("/url").await?;
        Url::parse(&s).map_err(|e| CmdError::new("not w3c", format!("{s}: {e}")))
    }

    /// Goes back in history.
    pub async fn back(&self) -> Result<(), CmdError> {
        self.post("/back", json!({})).await.map(drop)
    }

    /// Goes forward in history.
    pub async fn forward(&self) -> Result<(), CmdError> {
        self.post("/forward", json!({})).await.map(drop)
    }

    /// Reloads the page.
    pub async fn refresh(&self) -> Result<(), CmdError> {
        self.post("/refresh", json!({})).await.map(drop)
    }

    /// The page's title.
    pub async fn title(&self) -> Result<String, CmdError> {
        self.get_string("/title").await
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> Result<String, CmdError> {
        self.get_string("/source").await
    }

    /// The first element `search` finds.
    pub async fn find(&self, search: Locator<'_>) -> Result<Element, CmdError> {
        let v = self.post("/element", search.params()).await?;
        self.element(&v)
    }

    /// Every element `search` finds, in document order.
    pub async fn find_all(&self, search: Locator<'_>) -> Result<Vec<Element>, CmdError> {
        let v = self.post("/elements", search.params()).await?;
        self.elements(&v)
    }

    /// The focused element.
    pub async fn active_element(&self) -> Result<Element, CmdError> {
        let v = self.get("/element/active").await?;
        self.element(&v)
    }

    /// The element a command answered (`{"element-6066-...": ID}`).
    fn element(&self, v: &Value) -> Result<Element, CmdError> {
        let id = v
            .get(ELEMENT_KEY)
            .and_then(Value::as_str)
            .ok_or_else(|| CmdError::not_w3c("not an element", v))?;
        Ok(Element {
            client: self.clone(),
            id: id.to_string(),
        })
    }

    fn elements(&self, v: &Value) -> Result<Vec<Element>, CmdError> {
        let all = v
            .as_array()
            .ok_or_else(|| CmdError::not_w3c("not a list of elements", v))?;
        all.iter().map(|e| self.element(e)).collect()
    }

    /// Waits for a condition (see [`Wait`]).
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            client: self,
            timeout: Some(Duration::from_secs(30)),
            period: Duration::from_millis(250),
        }
    }

    /// Runs `script` as a function body with `arguments` = `args`; answers what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, CmdError> {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// Runs `script` with `args` and a last argument, the callback it calls with its answer.
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> Result<Value, CmdError> {
        self.post("/execute/async", json!({"script": script, "args": args}))
            .await
    }

    /// The visible page as PNG.
    pub async fn screenshot(&self) -> Result<Vec<u8>, CmdError> {
        png(self.get("/screenshot").await?)
    }

    /// The window's `(x, y, width, height)`.
    pub async fn get_window_rect(&self) -> Result<(u64, u64, u64, u64), CmdError> {
        let (x, y, w, h) = rect(&self.get("/window/rect").await?)?;
        Ok((x as u64, y as u64, w as u64, h as u64))
    }

    /// Moves and sizes the window.
    pub async fn set_window_rect(
        &self,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    ) -> Result<(), CmdError> {
        let rect = json!({"x": x, "y": y, "width": width, "height": height});
        self.post("/window/rect", rect).await.map(drop)
    }

    /// The window's `(width, height)`.
    pub async fn get_window_size(&self) -> Result<(u64, u64), CmdError> {
        let (_, _, w, h) = self.get_window_rect().await?;
        Ok((w, h))
    }

    /// Sizes the window.
    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<(), CmdError> {
        let rect = json!({"width": width, "height": height});
        self.post("/window/rect", rect).await.map(drop)
    }

    /// Accepts the open alert or confirm (its OK button).
    pub async fn accept_alert(&self) -> Result<(), CmdError> {
        self.post("/alert/accept", json!({})).await.map(drop)
    }

    /// Dismisses the open alert or confirm (its Cancel button).
    pub async fn dismiss_alert(&self) -> Result<(), CmdError> {
        self.post("/alert/dismiss", json!({})).await.map(drop)
    }

    /// The open alert's, confirm's or prompt's text.
    pub async fn get_alert_text(&self) -> Result<String, CmdError> {
        self.get_string("/alert/text").await
    }

    /// Types `text` into the open prompt.
    pub async fn send_alert_text(&self, text: &str) -> Result<(), CmdError> {
        self.post("/alert/text", json!({"text": text}))
            .await
            .map(drop)
    }
}

/// `(x, y, width, height)` from a rect command's answer.
fn rect(v: &Value) -> Result<(f64, f64, f64, f64), CmdError> {
    let n = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| CmdError::not_w3c("a rect", v))
    };
    Ok((n("x")?, n("y")?, n("width")?, n("height")?))
}

/// A PNG from a screenshot command's base64 answer.
fn png(v: Value) -> Result<Vec<u8>, CmdError> {
    let s = v
        .as_str()
        .ok_or_else(|| CmdError::not_w3c("a screenshot", &v))?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| CmdError::new("not w3c", format!("a screenshot: {e}")))
}

/// An element of the page.
#[derive(Clone, Debug)]
pub struct Element {
    client: Client,
    id: String,
}

impl serde::Serialize for Element {
    /// As WebDriver names it, so that an element can be a script's argument.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json!({ELEMENT_KEY: self.id}).serialize(s)
    }
}

impl Element {
    /// The driver's id of the element.
    pub fn element_id(&self) -> &str {
        &self.id
    }

    /// The session the element belongs to.
    pub fn client(self) -> Client {
        self.client
    }

    async fn get(&self, what: &str) -> Result<Value, CmdError> {
        self.client
            .get(&format!("/element/{}{what}", self.id))
            .await
    }

    async fn post(&self, what: &str, body: Value) -> Result<Value, CmdError> {
        let path = format!("/element/{}{what}", self.id);
        self.client.post(&path, body).await
    }

    async fn get_string(&self, what: &str) -> Result<String, CmdError> {
        match self.get(what).await? {
            Value::String(s) => Ok(s),
            v => Err(CmdError::not_w3c(what, &v)),
        }
    }

    async fn get_bool(&self, what: &str) -> Result<bool, CmdError> {
        let v = self.get(what).await?;
        v.as_bool().ok_or_else(|| CmdError::not_w3c(what, &v))
    }

    /// The first element below this one that `search` finds.
    pub async fn find(&self, search: Locator<'_>) -> Result<Element, CmdError> {
        let v = self.post("/element", search.params()).await?;
        self.client.element(&v)
    }

    /// Every element below this one that `search` finds.
    pub async fn find_all(&self, search: Locator<'_>) -> Result<Vec<Element>, CmdError> {
        let v = self.post("/elements", search.params()).await?;
        self.client.elements(&v)
    }

    /// Clicks the element's centre, scrolling it into view.
    pub async fn click(&self) -> Result<(), CmdError> {
        self.post("/click", json!({})).await.map(drop)
    }

    /// Empties an input or textarea.
    pub async fn clear(&self) -> Result<(), CmdError> {
        self.post("/clear", json!({})).await.map(drop)
    }

    /// Types `text` (which may hold [`Key`]s) into the element.
    pub async fn send_keys(&self, text: &str) -> Result<(), CmdError> {
        self.post("/value", json!({"text": text})).await.map(drop)
    }

    /// The element's rendered text.
    pub async fn text(&self) -> Result<String, CmdError> {
        self.get_string("/text").await
    }

    /// The element's attribute `name`, if it has one.
    pub async fn attr(&self, name: &str) -> Result<Option<String>, CmdError> {
        match self.get(&format!("/attribute/{name}")).await? {
            Value::String(s) => Ok(Some(s)),
            Value::Null => Ok(None),
            v => Err(CmdError::not_w3c(name, &v)),
        }
    }

    /// The element's DOM property `name` (booleans as `true`/`false`), if it has one.
    pub async fn prop(&self, name: &str) -> Result<Option<String>, CmdError> {
        match self.get(&format!("/property/{name}")).await? {
            Value::String(s) => Ok(Some(s)),
            Value::Null => Ok(None),
            v @ (Value::Bool(_) | Value::Number(_)) => Ok(Some(v.to_string())),
            v => Err(CmdError::not_w3c(name, &v)),
        }
    }

    /// The computed value of the CSS property `name`.
    pub async fn css_value(&self, name: &str) -> Result<String, CmdError> {
        self.get_string(&format!("/css/{name}")).await
    }

    /// The element's tag name.
    pub async fn tag_name(&self) -> Result<String, CmdError> {
        self.get_string("/name").await
    }

    /// The element's inner HTML (`inner`) or outer HTML.
    pub async fn html(&self, inner: bool) -> Result<String, CmdError> {
        let name = if inner { "innerHTML" } else { "outerHTML" };
        Ok(self.prop(name).await?.unwrap_or_default())
    }

    /// Whether the element is shown.
    pub async fn is_displayed(&self) -> Result<bool, CmdError> {
        self.get_bool("/displayed").await
    }

    /// Whether the element is enabled.
    pub async fn is_enabled(&self) -> Result<bool, CmdError> {
        self.get_bool("/enabled").await
    }

    /// Whether the checkbox, radio button or option is selected.
    pub async fn is_selected(&self) -> Result<bool, CmdError> {
        self.get_bool("/selected").await
    }

    /// The element's `(x, y, width, height)`.
    pub async fn rectangle(&self) -> Result<(f64, f64, f64, f64), CmdError> {
        rect(&self.get("/rect").await?)
    }

    /// The element as PNG.
    pub async fn screenshot(&self) -> Result<Vec<u8>, CmdError> {
        png(self.get("/screenshot").await?)
    }
}

/// A wait for a condition, polled every `period` up to `timeout` (30 s and 250 ms by default).
#[derive(Debug)]
pub struct Wait<'c> {
    client: &'c Client,
    timeout: Option<Duration>,
    period: Duration,
}

impl Wait<'_> {
    /// Waits at most `timeout`.
    #[must_use]
    pub fn at_most(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Waits without a deadline.
    #[must_use]
    pub fn forever(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// Polls every `period`.
    #[must_use]
    pub fn every(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Waits until `search` finds an element; other errors end the wait.
    pub async fn for_element(self, search: Locator<'_>) -> Result<Element, CmdError> {
        let end = self.timeout.map(|t| Instant::now() + t);
        loop {
            match self.client.find(search).await {
                Err(e) if e.is_no_such_element() => {}
                found => return found,
            }
            if end.is_some_and(|end| Instant::now() >= end) {
                return Err(CmdError::new(
                    "wait timeout",
                    format!("no element {search:?}"),
                ));
            }
            tokio::time::sleep(self.period).await;
        }
    }

    /// Waits until the page's URL is `url`.
    pub async fn for_url(self, url: &Url) -> Result<(), CmdError> {
        let end = self.timeout.map(|t| Instant::now() + t);
        while self.client.current_url().await? != *url {
            if end.is_some_and(|end| Instant::now() >= end) {
                return Err(CmdError::new("wait timeout", format!("not at {url}")));
            }
            tokio::time::sleep(self.period).await;
        }
        Ok(())
    }
}

macro_rules! keys {
    ($($name:ident = $code:literal,)*) => {
        /// Special keys for [`Element::send_keys`], named as in WebDriver's key table: each is
        /// one character of its private-use range.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Key {
            $($name,)*
        }

        impl Deref for Key {
            type Target = str;

            fn deref(&self) -> &str {
                match self {
                    $(Key::$name => $code,)*
                }
            }
        }
    };
}

keys! {
    Null = "\u{e000}",
    Cancel = "\u{e001}",
    Help = "\u{e002}",
    Backspace = "\u{e003}",
    Tab = "\u{e004}",
    Clear = "\u{e005}",
    Return = "\u{e006}",
    Enter = "\u{e007}",
    Shift = "\u{e008}",
    Control = "\u{e009}",
    Alt = "\u{e00a}",
    Pause = "\u{e00b}",
    Escape = "\u{e00c}",
    Space = "\u{e00d}",
    PageUp = "\u{e00e}",
    PageDown = "\u{e00f}",
    End = "\u{e010}",
    Home = "\u{e011}",
    Left = "\u{e012}",
    Up = "\u{e013}",
    Right = "\u{e014}",
    Down = "\u{e015}",
    Insert = "\u{e016}",
    Delete = "\u{e017}",
    Semicolon = "\u{e018}",
    Equals = "\u{e019}",
    NumPad0 = "\u{e01a}",
    NumPad1 = "\u{e01b}",
    NumPad2 = "\u{e01c}",
    NumPad3 = "\u{e01d}",
    NumPad4 = "\u{e01e}",
    NumPad5 = "\u{e01f}",
    NumPad6 = "\u{e020}",
    NumPad7 = "\u{e021}",
    NumPad8 = "\u{e022}",
    NumPad9 = "\u{e023}",
    Multiply = "\u{e024}",
    Add = "\u{e025}",
    Separator = "\u{e026}",
    Subtract = "\u{e027}",
    Decimal = "\u{e028}",
    Divide = "\u{e029}",
    F1 = "\u{e031}",
    F2 = "\u{e032}",
    F3 = "\u{e033}",
    F4 = "\u{e034}",
    F5 = "\u{e035}",
    F6 = "\u{e036}",
    F7 = "\u{e037}",
    F8 = "\u{e038}",
    F9 = "\u{e039}",
    F10 = "\u{e03a}",
    F11 = "\u{e03b}",
    F12 = "\u{e03c}",
    Meta = "\u{e03d}",
    Command = "\u{e03d}",
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl From<Key> for char {
    fn from(k: Key) -> char {
        k.chars().next().unwrap_or('\u{e000}')
    }
}

impl Add<&str> for Key {
    type Output = String;

    fn add(self, rhs: &str) -> String {
        format!("{self}{rhs}")
    }
}

impl Add<&Key> for &str {
    type Output = String;

    fn add(self, rhs: &Key) -> String {
        format!("{self}{rhs}")
    }
}

/// chromedriver on a free port, in a process group of its own; Chromium runs in that group, and
/// the whole group is killed on drop, even when a failed test never closed its session.
pub struct Driver {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Driver {
    /// Starts chromedriver (`scripts/need.sh chromedriver chromium-driver` installs it).
    pub fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts (scripts/need.sh chromedriver chromium-driver)");
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A session with `caps`, retried while the driver is not listening yet, for up to `wait`.
    pub async fn session(&self, caps: Map<String, Value>, wait: Duration) -> Client {
        let end = Instant::now() + wait;
        let mut builder = ClientBuilder::default();
        builder.capabilities(caps);
        loop {
            match builder.connect(&self.url).await {
                Ok(c) => return c,
                Err(e) if e.error == "lost" && Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no browser session: {e}"),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page with a field, a link, a button that asks to confirm, and `#late`, added a moment after it loads.
    const PAGE: &str = "data:text/html,<input id=field value=a><a href=%23 onclick=document.title=1>go</a>\
        <button id=ask onclick=document.title=confirm(2)>ask</button>\
        <script>setTimeout(()=>document.body.insertAdjacentHTML('beforeend',\
        '<p id=late>late</p>'),300)</script>";

    /// Against the real chromedriver: sizes the window, finds, types, reads, clicks, answers a
    /// confirm both ways, runs scripts with an element as their argument, waits, takes a
    /// screenshot, and a missing element's error carries the driver's message.
    #[test]
    fn drives_chromium() {
        let driver = Driver::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(async {
            let args = ["--headless", "--no-sandbox", "--disable-gpu"];
            let mut caps = Map::new();
            caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
            let c = driver.session(caps, Duration::from_secs(30)).await;
            c.set_window_size(800, 600).await.unwrap();
            assert_eq!(c.get_window_size().await.unwrap(), (800, 600));
            c.goto(PAGE).await.unwrap();
            let field = c.find(Locator::Id("field")).await.unwrap();
            field.send_keys("bc").await.unwrap();
            assert_eq!(field.prop("value").await.unwrap().as_deref(), Some("abc"));
            assert_eq!(field.attr("value").await.unwrap().as_deref(), Some("a"));
            assert_eq!(field.attr("nope").await.unwrap(), None);
            assert!(field.rectangle().await.unwrap().2 > 0.0);
            let tag = c.execute("return arguments[0].tagName", vec![json!(field)]);
            assert_eq!(tag.await.unwrap(), json!("INPUT"));
            let sum = c.execute_async("arguments[1](arguments[0] + 1)", vec![json!(41)]);
            assert_eq!(sum.await.unwrap(), json!(42));
            c.find(Locator::LinkText("go"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            assert_eq!(c.title().await.unwrap(), "1");
            assert_eq!(c.current_url().await.unwrap().scheme(), "data");
            let ask = c.find(Locator::Css("#ask")).await.unwrap();
            ask.click().await.unwrap();
            assert_eq!(c.get_alert_text().await.unwrap(), "2");
            c.accept_alert().await.unwrap();
            assert_eq!(c.title().await.unwrap(), "true");
            ask.click().await.unwrap();
            c.dismiss_alert().await.unwrap();
            assert_eq!(c.title().await.unwrap(), "false");
            let late = c.wait().for_element(Locator::Css("#late")).await.unwrap();
            assert_eq!(late.text().await.unwrap(), "late");
            assert_eq!(
                c.find_all(Locator::XPath("//p|//a")).await.unwrap().len(),
                2
            );
            assert!(c.screenshot().await.unwrap().starts_with(b"\x89PNG"));
            let missing = c.find(Locator::Css("#nope")).await.unwrap_err();
            c.close().await.unwrap();
            missing
        });
        drop(driver);
        assert!(result.is_no_such_element(), "{result}");
        assert!(result.message.contains("#nope"), "{result}");
    }

    #[test]
    fn an_error_answer_carries_the_drivers_code_and_message() {
        let body = r##"{"value":{"error":"no such element","message":"no such element: Unable to locate element: {\"selector\":\"#nope\"}","stacktrace":""}}"##;
        let e = answer(false, body).unwrap_err();
        assert!(e.is_no_such_element(), "{e}");
        assert_eq!(
            e.to_string(),
            r##"no such element: no such element: Unable to locate element: {"selector":"#nope"}"##
        );
        assert_eq!(answer(true, r#"{"value":null}"#).unwrap(), Value::Null);
        assert_eq!(
            answer(true, r#"{"value":{"a":1}}"#).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(answer(false, "<html>").unwrap_err().error, "not w3c");
        assert_eq!(
            answer(false, r#"{"value":{}}"#).unwrap_err().error,
            "not w3c"
        );
    }

    #[test]
    fn locators_and_keys_are_webdrivers() {
        assert_eq!(
            Locator::Id("token").params(),
            json!({"using": "xpath", "value": "//*[@id=\"token\"]"})
        );
        assert_eq!(Locator::Css("a").params()["using"], "css selector");
        assert_eq!(Locator::LinkText("a").params()["using"], "link text");
        assert_eq!(Key::Enter.to_string(), "\u{e007}");
        assert_eq!(Key::Shift + "a", "\u{e008}a");
        assert_eq!(char::from(Key::F12), '\u{e03c}');
    }
}
