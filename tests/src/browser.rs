//! A WebDriver client for tests of web pages: Debian's headless Chromium driven through Debian's
//! ChromeDriver (packages `chromium` and `chromium-driver`). Each [`Browser`] has a chromedriver,
//! a profile and a session of its own; dropping it ends them all.
//!
//! ```text
//! let browser = Browser::start().await?;
//! browser.goto(&format!("http://{addr}/")).await?;
//! let n = browser.find("#n").await?.expect("#n");
//! let text = browser.text(&n).await?;
//! browser.wait_text("#n", Duration::from_secs(5), |t| t != text).await?;
//! ```
//!
//! The browser reaches loopback only: every other address goes to a proxy that is not there
//! (`--proxy-server=127.0.0.1:9`; Chromium never proxies loopback), so pages under test must be
//! served on 127.0.0.1 or `localhost`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::agent::{free_port, try_http_request, HttpResponse};

/// Environment variable naming the Chromium binary instead of [`DEFAULT_CHROMIUM`].
pub const CHROMIUM_ENV: &str = "DRIFTLESS_CHROMIUM";

/// Environment variable naming the chromedriver binary instead of [`DEFAULT_CHROMEDRIVER`].
pub const CHROMEDRIVER_ENV: &str = "DRIFTLESS_CHROMEDRIVER";

/// Debian's Chromium binary (package `chromium`). The real one, not the `/usr/bin/chromium`
/// wrapper script, which adds flags and Google API keys from `/etc/chromium.d` (remote
/// extensions among them).
pub const DEFAULT_CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// Debian's ChromeDriver (package `chromium-driver`).
pub const DEFAULT_CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The window size a session starts with (outer; see [`Browser::set_window_size`]).
pub const WINDOW_SIZE: (u32, u32) = (1280, 900);

/// The limit of one WebDriver command (above the session's page-load limit).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The limit of creating the session, which launches Chromium.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long chromedriver may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the drop waits for the session to be deleted, and then for the processes to go.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Browser::wait_for`] and [`Browser::wait_text`] poll.
const POLL: Duration = Duration::from_millis(150);

/// The key of a W3C element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A page element: its W3C element reference id, valid in the session that found it. Pass one to
/// [`Browser::execute`] as `Value::from(&element)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element(String);

impl Element {
    /// The reference id.
    pub fn id(&self) -> &str {
        &self.0
    }
}

impl From<&Element> for Value {
    fn from(e: &Element) -> Value {
        json!({ ELEMENT_KEY: e.0 })
    }
}

/// An error the WebDriver server answered with (its `error` code, e.g. `no such element` or
/// `stale element reference`, and message). Find it with `err.downcast_ref::<WebDriverError>()`.
#[derive(Clone, Debug)]
pub struct WebDriverError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // chromedriver appends a stack trace and session info after the first line
        write!(f, "{} (HTTP {}): {}", self.error, self.status, self.message.lines().next().unwrap_or_default())
    }
}

impl std::error::Error for WebDriverError {}

/// Whether `err` is the WebDriver error `code`.
fn is_webdriver_error(err: &anyhow::Error, code: &str) -> bool {
    err.downcast_ref::<WebDriverError>().is_some_and(|e| e.error == code)
}

/// A headless Chromium session. Dropping it deletes the session (for at most 5 s) and kills
/// chromedriver, Chromium and Chromium's helpers, also when the test panics.
pub struct Browser {
    session: String,
    driver: Driver,
}

impl Browser {
    /// Starts chromedriver on a free loopback port (only local connections are allowed), waits
    /// until it is ready and opens a session of headless Chromium: window [`WINDOW_SIZE`], a
    /// throwaway profile, no first-run, sync, component updates or background networking, and
    /// no network beyond loopback. Fails saying which package to install when a binary is missing.
    pub async fn start() -> Result<Browser> {
        let chromedriver = binary(CHROMEDRIVER_ENV, DEFAULT_CHROMEDRIVER, "chromium-driver")?;
        let chromium = binary(CHROMIUM_ENV, DEFAULT_CHROMIUM, "chromium")?;
        let driver = Driver::start(&chromedriver).await?;
        let profile = driver.dir.path().join("profile");
        let args = vec![
            "--headless=new".to_string(),
            // the tests run as root in CI, where Chromium's sandbox cannot start
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            format!("--window-size={},{}", WINDOW_SIZE.0, WINDOW_SIZE.1),
            format!("--user-data-dir={}", profile.display()),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-default-apps".to_string(),
            "--disable-extensions".to_string(),
            "--disable-domain-reliability".to_string(),
            "--disable-client-side-phishing-detection".to_string(),
            "--disable-breakpad".to_string(),
            "--no-pings".to_string(),
            "--mute-audio".to_string(),
            // loopback is never proxied; anything else fails at once, without a DNS lookup
            "--proxy-server=127.0.0.1:9".to_string(),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "implicit": 0, "pageLoad": 20_000, "script": 10_000 },
                    "goog:chromeOptions": { "binary": chromium, "args": args },
                }
            }
        });
        let value = driver.call("POST", "/session", Some(&capabilities), SESSION_TIMEOUT).await.map_err(|e| {
            anyhow!("creating a Chromium session ({}) failed: {e:#}\nchromedriver output:\n{}", chromium.display(), driver.output_tail())
        })?;
        let session = value["sessionId"].as_str().ok_or_else(|| anyhow!("new session without a sessionId: {value}"))?.to_string();
        Ok(Browser { session, driver })
    }

    /// Navigates to `url` and waits for the page to load (at most 20 s).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.command("POST", "/url", Some(json!({ "url": url }))).await.with_context(|| format!("goto {url}"))?;
        Ok(())
    }

    /// The URL of the current page.
    pub async fn current_url(&self) -> Result<String> {
        string(self.command("GET", "/url", None).await?)
    }

    /// The title of the current page.
    pub async fn title(&self) -> Result<String> {
        string(self.command("GET", "/title", None).await?)
    }

    /// The first element matching the CSS selector `css`, if any.
    pub async fn find(&self, css: &str) -> Result<Option<Element>> {
        match self.command("POST", "/element", Some(json!({ "using": "css selector", "value": css }))).await {
            Ok(value) => element(&value).map(Some),
            Err(e) if is_webdriver_error(&e, "no such element") => Ok(None),
            Err(e) => Err(e.context(format!("find {css:?}"))),
        }
    }

    /// Every element matching the CSS selector `css`, in document order.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let value = self.command("POST", "/elements", Some(json!({ "using": "css selector", "value": css }))).await?;
        value.as_array().ok_or_else(|| anyhow!("find_all {css:?}: not a list: {value}"))?.iter().map(element).collect()
    }

    /// The rendered text of `element` (as a user sees it: hidden parts left out).
    pub async fn text(&self, element: &Element) -> Result<String> {
        string(self.command("GET", &format!("/element/{}/text", element.0), None).await?)
    }

    /// The attribute `name` of `element`, `None` when it has none.
    pub async fn attribute(&self, element: &Element, name: &str) -> Result<Option<String>> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b)) {
            bail!("attribute name {name:?}: only ASCII letters, digits and -_:. are supported");
        }
        match self.command("GET", &format!("/element/{}/attribute/{name}", element.0), None).await? {
            Value::Null => Ok(None),
            value => string(value).map(Some),
        }
    }

    /// Runs `script` as the body of a synchronous function in the page, with `args` as
    /// `arguments` (an [`Element`] passes as `Value::from(&element)`), and returns what it
    /// returns (`null` for nothing).
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.command("POST", "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        let encoded = string(self.command("GET", "/screenshot", None).await?)?;
        let png = base64::engine::general_purpose::STANDARD.decode(encoded.as_bytes()).context("screenshot: not base64")?;
        if png_size(&png).is_none() {
            bail!("screenshot: not a PNG ({} bytes starting {:?})", png.len(), &png[..png.len().min(16)]);
        }
        Ok(png)
    }

    /// Resizes the window. That is the outer size: headless Chromium emulates toolbars, so the
    /// viewport (and a screenshot) is lower by their height (143 px with Chromium 156).
    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.command("POST", "/window/rect", Some(json!({ "width": width, "height": height }))).await?;
        Ok(())
    }

    /// Polls `f` every 150 ms until it returns `Some`, and returns that value. An error from `f`
    /// ends the wait with that error; at `timeout` (a call still running then is abandoned) the
    /// error names `what`.
    pub async fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl AsyncFnMut(&Browser) -> Result<Option<T>>) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, f(self)).await {
                Ok(Ok(Some(value))) => return Ok(value),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(e.context(format!("waiting for {what}"))),
                Err(_) => break,
            }
            if tokio::time::Instant::now() + POLL >= deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        bail!("timed out after {timeout:?} waiting for {what}")
    }

    /// Polls the text of the first element matching `css` until `accept` takes it, and returns
    /// it. No match yet, or an element replaced between finding and reading it, counts as not
    /// yet. At `timeout` the error names `css` and the last text seen.
    pub async fn wait_text(&self, css: &str, timeout: Duration, mut accept: impl FnMut(&str) -> bool) -> Result<String> {
        let mut last: Option<String> = None;
        let waited = self
            .wait_for(&format!("the text of {css:?}"), timeout, async |b| {
                let Some(element) = b.find(css).await? else {
                    last = None;
                    return Ok(None);
                };
                match b.text(&element).await {
                    Ok(text) if accept(&text) => Ok(Some(text)),
                    Ok(text) => {
                        last = Some(text);
                        Ok(None)
                    }
                    Err(e) if is_webdriver_error(&e, "stale element reference") => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await;
        waited.map_err(|e| match &last {
            Some(text) => e.context(format!("last text seen: {text:?}")),
            None => e.context(format!("no element matched {css:?}")),
        })
    }

    /// The processes of this browser still running: chromedriver, and every process whose
    /// command line names its temporary directory (Chromium, its helpers, crashpad).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.driver.child.id()];
        pids.extend(self.driver.helpers());
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// One command of this session: `path` is below `/session/<id>`.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        self.driver.call(method, &format!("/session/{}{path}", self.session), body.as_ref(), COMMAND_TIMEOUT).await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort: chromedriver closes Chromium; the Driver's drop kills whatever is left.
        let path = format!("/session/{}", self.session);
        if let Err(e) = blocking_request(self.driver.addr, "DELETE", &path, DROP_TIMEOUT) {
            eprintln!("warning: could not delete the WebDriver session: {e:#}");
        }
    }
}

/// A chromedriver process, leader of its own process group, with its temporary directory
/// (Chromium's profile, `HOME` and the output of both). Dropping it kills the group and any
/// process naming the directory, then removes the directory.
struct Driver {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Driver {
    /// Spawns chromedriver and waits until `GET /status` says ready, on another port if the
    /// chosen one was taken meanwhile.
    async fn start(chromedriver: &Path) -> Result<Driver> {
        let mut last = String::new();
        for _ in 0..3 {
            let mut driver = Driver::spawn(chromedriver)?;
            match driver.wait_ready().await {
                Ok(()) => return Ok(driver),
                Err(e) => {
                    last = format!("{e:#}");
                    if !last.contains("already in use") {
                        break;
                    }
                }
            }
        }
        bail!("chromedriver did not get ready: {last}")
    }

    fn spawn(chromedriver: &Path) -> Result<Driver> {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new().prefix("driftless-browser-").tempdir().context("a temporary directory")?;
        let home = dir.path().join("home");
        std::fs::create_dir(&home).context("a home directory")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let output = std::fs::File::create(dir.path().join("output")).context("chromedriver's output file")?;
        let child = Command::new(chromedriver)
            .arg(format!("--port={}", addr.port()))
            // no --allowed-ips: chromedriver then listens on loopback only
            .arg("--log-level=WARNING")
            // Chromium keeps crash reports and its NSS database under HOME / XDG_CONFIG_HOME:
            // inside the temporary directory, not the user's
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .stdin(Stdio::null())
            .stdout(output.try_clone().context("chromedriver's output file")?)
            .stderr(output)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        Ok(Driver { child, addr, dir })
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("try_wait")? {
                bail!("chromedriver exited with {status}:\n{}", self.output_tail());
            }
            if let Ok(status) = self.call("GET", "/status", None, Duration::from_secs(2)).await {
                if status["ready"] == true {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver on {} not ready after {READY_TIMEOUT:?}:\n{}", self.addr, self.output_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One request; returns the answer's `value`, or the [`WebDriverError`] it holds.
    async fn call(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_empty() { &[] } else { &[("Content-Type", "application/json; charset=utf-8")] };
        let answer = try_http_request(self.addr, method, path, headers, body.as_bytes(), timeout).await?;
        parse_answer(method, path, &answer)
    }

    /// The end of chromedriver's (and Chromium's) output, for error messages.
    fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("output")).unwrap_or_default();
        crate::agent::tail(&text, 30)
    }

    /// Processes other than chromedriver whose command line names the temporary directory.
    /// Some leave the process group (crashpad starts its own session).
    fn helpers(&self) -> Vec<u32> {
        let needle = self.dir.path().as_os_str().as_encoded_bytes().to_vec();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != std::process::id())
            .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle)))
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
        let deadline = Instant::now() + DROP_TIMEOUT;
        loop {
            let left = self.helpers();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("warning: browser processes {left:?} still running after {DROP_TIMEOUT:?}");
                break;
            }
            for pid in left {
                // SAFETY: signals one process that names our temporary directory.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The binary named by `env`, else `default`; an error naming the Debian package when it is not
/// there.
fn binary(env: &str, default: &str, package: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(env) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(default),
    };
    if !path.is_file() {
        bail!("{} not found: install the Debian package {package} (apt-get install {package}) or set {env}", path.display());
    }
    Ok(path)
}

/// The `value` of a WebDriver answer, or its error.
fn parse_answer(method: &str, path: &str, answer: &HttpResponse) -> Result<Value> {
    let mut json: Value = serde_json::from_str(&answer.body)
        .with_context(|| format!("{method} {path}: HTTP {} and not JSON: {}", answer.status, crate::agent::tail(&answer.body, 5)))?;
    let value = json["value"].take();
    if answer.status != 200 {
        let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
        let error = WebDriverError { status: answer.status, error: text("error"), message: text("message") };
        return Err(anyhow::Error::new(error).context(format!("{method} {path}")));
    }
    Ok(value)
}

fn string(value: Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s),
        other => bail!("expected a string, got {other}"),
    }
}

fn element(value: &Value) -> Result<Element> {
    let id = value[ELEMENT_KEY].as_str().ok_or_else(|| anyhow!("not an element reference: {value}"))?;
    Ok(Element(id.to_string()))
}

/// Width and height from a PNG's IHDR chunk; `None` when `png` does not start with the PNG
/// signature and an IHDR.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    let rest = png.strip_prefix(b"\x89PNG\r\n\x1a\n")?;
    // chunk length (13), type, then width and height, big-endian
    if rest.get(4..8)? != b"IHDR" {
        return None;
    }
    let be = |at: usize| Some(u32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?));
    Some((be(8)?, be(12)?))
}

/// A request from a context without a runtime (a drop): answered or not within `timeout`.
fn blocking_request(addr: SocketAddr, method: &str, path: &str, timeout: Duration) -> Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !crate::agent::is_complete(&answer) {
        match stream.read(&mut buf).with_context(|| format!("{method} {path}: no answer in {timeout:?}"))? {
            0 => break,
            n => answer.extend_from_slice(&buf[..n]),
        }
    }
    let status = String::from_utf8_lossy(&answer).split_whitespace().nth(1).unwrap_or_default().to_string();
    if status != "200" {
        bail!("{method} {path}: HTTP {status:?}");
    }
    Ok(())
}
