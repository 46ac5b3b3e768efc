//! The console in a real browser: Debian's headless Chromium driven over
//! WebDriver by Debian's chromedriver, which this test starts on a free port.
//! A viewer logs in and finds a user's holds, fails to replay (forbidden); an
//! operator logs in, previews and replays a dead letter, and finds the replay
//! in the audit page. Every page is saved as a screenshot (at 1280 px and at
//! 390 px) under `<target dir>/console-screenshots/`, and the browser's console
//! log must hold no error (a CSP violation, a failed load or a script error
//! would be one).
//!
//! Not skipped when the browser is missing: it fails, saying how to install it.
//!
//! The WebDriver client is the dozen calls below over reqwest, rather than
//! fantoccini: fantoccini 0.22 brings `webdriver` 0.53 and with it icu_segmenter
//! and its data tables, http 0.2, cookie 0.16 and thiserror 1 (21 crates) for
//! these few JSON endpoints.

use super::{APPROVER, Client, OPERATOR_TOKEN, Tokens, VIEWER_TOKEN, dead_letter, granted};
use crate::helpers::{TestApp, eventually, spawn_live_app};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(default: &str, name: &str) -> Option<PathBuf> {
    if Path::new(default).exists() {
        return Some(default.into());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

async fn start_driver() -> Driver {
    let install = "install Debian's chromium and chromium-driver: \
                   apt-get install -y --no-install-recommends chromium chromium-driver \
                   (.ci/run and the README's test command do)";
    let Some(driver) = find_program(CHROMEDRIVER, "chromedriver") else {
        panic!("chromedriver not found at {CHROMEDRIVER} or on PATH: {install}");
    };
    assert!(find_program(CHROMIUM, "chromium").is_some(), "chromium not found at {CHROMIUM}: {install}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; {install}", driver.display()));
    let d = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let http = reqwest::Client::new();
    eventually("chromedriver to answer /status", Duration::from_secs(20), || async {
        let status = http.get(format!("{}/status", d.url)).send().await.ok()?.json::<Value>().await.ok()?;
        status["value"]["ready"].as_bool().filter(|r| *r)
    })
    .await;
    d
}

/// One WebDriver session.
struct Browser {
    http: reqwest::Client,
    session: String,
    shots: PathBuf,
    n: usize,
}

impl Browser {
    async fn new(driver: &Driver, shots: PathBuf) -> Self {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find_program(CHROMIUM, "chromium").unwrap(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--hide-scrollbars", "--no-first-run",
                         "--disable-extensions", "--disable-background-networking"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let resp: Value =
            http.post(format!("{}/session", driver.url)).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = resp["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {resp}")).to_owned();
        let http_session = format!("{}/session/{session}", driver.url);
        Self { http, session: http_session, shots, n: 0 }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = v["value"]["error"].as_str() {
            panic!("WebDriver {method} {path}: {err}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    /// The text of `css` now, `None` while the page is changing under us.
    async fn try_text(&self, css: &str) -> Option<String> {
        let v: Value = self
            .http
            .post(format!("{}/element", self.session))
            .json(&json!({"using": "css selector", "value": css}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let el = v["value"][ELEMENT].as_str()?;
        let v: Value =
            self.http.get(format!("{}/element/{el}/text", self.session)).send().await.ok()?.json().await.ok()?;
        v["value"].as_str().map(str::to_owned)
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None).await.as_str().unwrap().to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let v = self.cmd(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("finding {css}: {v}")).to_owned()
    }

    async fn count(&self, css: &str) -> usize {
        let v =
            self.cmd(reqwest::Method::POST, "/elements", Some(json!({"using": "css selector", "value": css}))).await;
        v.as_array().map_or(0, Vec::len)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/clear"), Some(json!({}))).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/value"), Some(json!({"text": text}))).await;
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{el}/click"), Some(json!({}))).await;
    }

    async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{el}/text"), None).await.as_str().unwrap().to_owned()
    }

    async fn run(&self, script: &str) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    async fn resize(&self, width: u32, height: u32) {
        self.cmd(reqwest::Method::POST, "/window/rect", Some(json!({"width": width, "height": height}))).await;
    }

    /// Saves a PNG of the viewport as `NN-name.png`.
    async fn shot(&mut self, name: &str) {
        self.n += 1;
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.shots.join(format!("{:02}-{name}.png", self.n)), png).unwrap();
    }

    /// The browser's console log since the last call (chromedriver's log endpoint).
    async fn log(&self) -> Vec<Value> {
        let v = self.cmd(reqwest::Method::POST, "/se/log", Some(json!({"type": "browser"}))).await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Logs in through the form.
    async fn login(&self, base: &str, token: &str, name: &str) {
        self.goto(&format!("{base}/console")).await;
        assert!(self.url().await.contains("/console/login"), "not logged in: the login form");
        self.type_into("#operator", name).await;
        self.type_into("#token", token).await;
        self.click("form.login button[type=submit]").await;
        assert_eq!(self.url().await, format!("{base}/console"));
    }

    async fn close(&self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

/// `<target dir>/console-screenshots`, from the test binary's own path (`<target>/debug/deps/it-…`).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn body_text(b: &Browser) -> String {
    b.text("main").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser_viewer_finds_holds_operator_replays_and_audit_shows_it() {
    let driver = start_driver().await;
    let tokens = Tokens::new();
    let (app, provider): (TestApp, _) = spawn_live_app(|c| tokens.configure(c)).await;
    granted(&app, &provider, 11, "u-holder").await;
    let dl = dead_letter(&app, &provider, 12, "u-stuck").await;
    let base = format!("http://{}", app.ops_addr);
    let shots = screenshot_dir();
    println!("console screenshots: {}", shots.display());
    let mut b = Browser::new(&driver, shots.clone()).await;

    // A viewer: the overview, then a user's holds.
    b.login(&base, VIEWER_TOKEN, "vera").await;
    let text = body_text(&b).await;
    assert!(text.contains("Active holds") && text.contains("Open dead letters"), "{text}");
    b.shot("overview-viewer").await;
    b.click("nav a[href='/console/access']").await;
    b.type_into("#f-user", "u-holder").await;
    b.click("form.filters button[type=submit]").await;
    let table = eventually("the holds of u-holder", Duration::from_secs(10), || async {
        b.try_text("table.holds").await.filter(|t| t.contains("u-holder"))
    })
    .await;
    assert!(b.url().await.contains("user=u-holder"));
    assert!(table.contains("u-holder") && table.contains("CON-11") && table.contains(APPROVER), "{table}");
    assert_eq!(b.count("table.holds tbody tr").await, 1);
    b.shot("access-viewer").await;

    // The viewer sees no replay button; a replay posted anyway (with the
    // session's own CSRF token, as a crafted form would) is forbidden.
    b.goto(&format!("{base}/console/dead-letters/{dl}/preview")).await;
    assert_eq!(b.count("#replay").await, 0);
    b.shot("preview-viewer").await;
    b.run(&format!(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/console/dead-letters/{dl}/replay'; \
         const c = document.createElement('input'); c.type = 'hidden'; c.name = 'csrf'; \
         c.value = document.querySelector('input[name=csrf]').value; f.appendChild(c); \
         document.body.appendChild(f); f.submit();"
    ))
    .await;
    eventually("the refusal page", Duration::from_secs(10), || async {
        b.try_text("main").await.filter(|t| t.contains("needs the operator role"))
    })
    .await;
    b.shot("replay-forbidden-viewer").await;
    // The browser logs the refused document itself (403); that one is expected, nothing else.
    let unexpected: Vec<Value> = b
        .log()
        .await
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .filter(|e| {
            let m = e["message"].as_str().unwrap_or("");
            !(m.contains(&format!("/console/dead-letters/{dl}/replay")) && m.contains("403"))
        })
        .collect();
    assert!(unexpected.is_empty(), "the browser logged errors: {unexpected:#?}");
    let replayed: Option<String> = sqlx::query_scalar("SELECT replayed_by FROM dead_letters WHERE id = $1")
        .bind(dl)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(replayed, None);
    b.click("header form button[type=submit]").await; // log out
    assert!(b.url().await.contains("/console/login"));

    // An operator: the dead letters, the preview, the replay.
    b.login(&base, OPERATOR_TOKEN, "olga").await;
    b.click("nav a[href='/console/dead-letters']").await;
    b.shot("dead-letters-operator").await;
    b.click(&format!("a[href='/console/dead-letters/{dl}']")).await;
    let text = body_text(&b).await;
    assert!(text.contains("503 provider down") && text.contains("u-stuck"), "{text}");
    b.shot("dead-letter-operator").await;
    b.click(&format!("a[href='/console/dead-letters/{dl}/preview']")).await;
    assert_eq!(b.text("strong.would").await, "apply");
    b.shot("preview-operator").await;
    b.click("#replay").await;
    assert!(b.url().await.ends_with(&format!("/console/dead-letters/{dl}?done=replayed")));
    assert!(body_text(&b).await.contains("Replayed"));
    b.shot("replayed-operator").await;

    // The replay in the audit page, with its detail expanded (no script needed).
    b.click("nav a[href='/console/audit']").await;
    b.type_into("#a-action", "replayed").await;
    b.click("form.filters button[type=submit]").await;
    let table = b.text("table.audit").await;
    assert!(table.contains("replayed") && table.contains("olga"), "{table}");
    b.click("table.audit details summary").await;
    assert!(b.text("table.audit details pre").await.contains("\"via\": \"console\""));
    b.shot("audit-replayed").await;
    eventually("the replayed grant", Duration::from_secs(30), || async {
        provider.members().iter().any(|(s, _)| s == "u-stuck").then_some(())
    })
    .await;
    b.goto(&format!("{base}/console/applications")).await;
    b.shot("applications").await;

    // 390 px wide: the page does not scroll sideways (wide tables scroll in their own box).
    b.resize(390, 844).await;
    for (path, name) in
        [("/console", "overview-390"), ("/console/audit", "audit-390"), ("/console/access", "access-390")]
    {
        b.goto(&format!("{base}{path}")).await;
        let fits = b.run("return document.documentElement.scrollWidth <= window.innerWidth;").await;
        assert_eq!(fits, json!(true), "{path} is wider than 390 px");
        b.shot(name).await;
    }

    let errors: Vec<Value> = b.log().await.into_iter().filter(|e| e["level"] == "SEVERE").collect();
    b.close().await;
    assert!(errors.is_empty(), "the browser logged errors: {errors:#?}");
    let saved = std::fs::read_dir(&shots).unwrap().count();
    assert!(saved >= 12, "{saved} screenshots in {}", shots.display());
    // The same as the HTTP client sees it.
    let mut c = Client::new(&app);
    c.login(VIEWER_TOKEN, "vera").await;
}
