//! Tests of the WebDriver client (`driftless_tests::browser`) against a page served on loopback by
//! the test itself: headless Chromium, no cluster.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use driftless_tests::browser::{png_size, Browser, WebDriverError, WINDOW_SIZE};
use serde_json::{json, Value};

/// A counter whose script asks `/next` for the next number every 200 ms, without navigating.
const PAGE: &str = r#"<!doctype html>
<html><head><title>counter</title></head>
<body>
<p>count: <span id="n" data-start="1">1</span></p>
<ul><li>a</li><li>b</li><li hidden>c</li></ul>
<script>
setInterval(async () => {
  const answer = await fetch("/next");
  document.getElementById("n").textContent = await answer.text();
}, 200);
</script>
</body></html>"#;

/// Serves [`PAGE`] at `/` and 2, 3, 4... at `/next`; returns the address and the number of
/// `/next` requests so far.
async fn serve_counter() -> (SocketAddr, Arc<AtomicU64>) {
    let fetched = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/next", get(|State(n): State<Arc<AtomicU64>>| async move { (n.fetch_add(1, Ordering::SeqCst) + 2).to_string() }))
        .with_state(fetched.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve the page") });
    (addr, fetched)
}

/// The viewport in device pixels, as the page sees it.
async fn viewport(browser: &Browser) -> (u32, u32) {
    let v = browser.execute("return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio];", vec![]).await.unwrap();
    let px = |i: usize| v[i].as_f64().unwrap_or_else(|| panic!("not a number: {v}")) as u32;
    (px(0), px(1))
}

#[tokio::test]
async fn a_page_that_updates_itself_is_read_waited_on_and_screenshotted() {
    let (addr, fetched) = serve_counter().await;
    let browser = Browser::start().await.expect("a browser");
    let url = format!("http://{addr}/");
    browser.goto(&url).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap(), url);
    assert_eq!(browser.title().await.unwrap(), "counter");

    let n = browser.find("#n").await.unwrap().expect("#n is on the page");
    assert_eq!(browser.attribute(&n, "data-start").await.unwrap().as_deref(), Some("1"));
    assert_eq!(browser.attribute(&n, "data-missing").await.unwrap(), None);
    assert!(browser.find("#missing").await.unwrap().is_none());
    let items = browser.find_all("li").await.unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(browser.text(&items[1]).await.unwrap(), "b");
    assert_eq!(browser.text(&items[2]).await.unwrap(), "", "hidden text is not rendered text");
    assert!(browser.find_all("table").await.unwrap().is_empty());

    // scripts: arguments, elements as arguments, results
    assert_eq!(browser.execute("return arguments[0] + arguments[1];", vec![json!(2), json!(3)]).await.unwrap(), json!(5));
    assert_eq!(browser.execute("return arguments[0].id;", vec![Value::from(&n)]).await.unwrap(), json!("n"));
    assert_eq!(browser.execute("window.__marker = 1;", vec![]).await.unwrap(), Value::Null);

    // the number changes in place: twice more than it is now, with the same window
    let now: u64 = browser.text(&n).await.unwrap().parse().expect("a number");
    let later = browser
        .wait_text("#n", Duration::from_secs(15), |t| t.parse::<u64>().is_ok_and(|v| v >= now + 2))
        .await
        .expect("the counter goes up");
    assert!(later.parse::<u64>().unwrap() >= now + 2);
    assert_eq!(browser.execute("return window.__marker;", vec![]).await.unwrap(), json!(1), "the page was not reloaded");
    let same: u64 = browser.text(&n).await.expect("the element found before still reads").parse().unwrap();
    assert!(same >= now + 2);
    assert!(fetched.load(Ordering::SeqCst) >= 2, "the numbers came from /next");

    // the window holds the viewport and the browser's (emulated) toolbars above it
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let (width, height) = png_size(&png).expect("a PNG with an IHDR");
    assert_eq!((width, height), viewport(&browser).await, "the screenshot is the viewport");
    assert_eq!(width, WINDOW_SIZE.0);
    assert!(height > WINDOW_SIZE.1 / 2 && height <= WINDOW_SIZE.1, "{height} of a {WINDOW_SIZE:?} window");
    let toolbars = WINDOW_SIZE.1 - height;

    browser.set_window_size(800, 600).await.unwrap();
    let png = browser.screenshot().await.unwrap();
    assert_eq!(png_size(&png), Some((800, 600 - toolbars)));
    assert_eq!(viewport(&browser).await, (800, 600 - toolbars));
}

#[tokio::test]
async fn waits_fail_naming_what_they_waited_for_and_the_browser_reaches_only_loopback() {
    let (addr, _) = serve_counter().await;
    let browser = Browser::start().await.expect("a browser");
    browser.goto(&format!("http://{addr}/")).await.unwrap();

    let err = browser.wait_text("#n", Duration::from_millis(700), |t| t == "never").await.expect_err("no such text");
    let message = format!("{err:#}");
    assert!(message.contains("timed out after 700ms waiting for the text of \"#n\""), "{message}");
    assert!(message.contains("last text seen: \""), "{message}");

    let err = browser.wait_text("#absent", Duration::from_millis(400), |_| true).await.expect_err("no element");
    assert!(format!("{err:#}").contains("no element matched \"#absent\""), "{err:#}");

    let err = browser
        .wait_for("a failing probe", Duration::from_secs(5), async |_| -> anyhow::Result<Option<()>> { anyhow::bail!("probe broke") })
        .await;
    let message = format!("{:#}", err.expect_err("the probe's error ends the wait"));
    assert!(message.starts_with("waiting for a failing probe: probe broke"), "{message}");

    let polls = std::cell::Cell::new(0);
    let third = browser
        .wait_for("the third poll", Duration::from_secs(5), async |_| {
            polls.set(polls.get() + 1);
            Ok((polls.get() == 3).then_some(polls.get()))
        })
        .await
        .unwrap();
    assert_eq!(third, 3);

    // a script error is the WebDriver error, with its code
    let err = browser.execute("throw new Error('boom');", vec![]).await.expect_err("the script throws");
    assert_eq!(err.downcast_ref::<WebDriverError>().map(|e| e.error.as_str()), Some("javascript error"), "{err:#}");

    // TEST-NET-1 (RFC 5737) is routed nowhere: without the dead proxy this would hang, not fail
    let started = std::time::Instant::now();
    let err = browser.goto("http://192.0.2.1/").await.expect_err("nothing beyond loopback");
    assert!(format!("{err:#}").contains("ERR_PROXY_CONNECTION_FAILED"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(10), "failed at once, in {:?}", started.elapsed());
}

#[tokio::test]
async fn dropping_the_browser_ends_chromedriver_and_every_chromium_process() {
    let (addr, _) = serve_counter().await;
    let browser = Browser::start().await.expect("a browser");
    browser.goto(&format!("http://{addr}/")).await.unwrap();
    let pids = browser.pids();
    let names: Vec<String> = pids.iter().filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok()).collect();
    assert!(names.iter().any(|n| n.trim() == "chromedriver"), "{names:?}");
    assert!(names.iter().filter(|n| n.starts_with("chrom") && n.trim() != "chromedriver").count() >= 2, "{names:?}");

    drop(browser);
    // gone, or a zombie waiting for init to reap it
    let running: Vec<&u32> = pids
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
        })
        .collect();
    assert!(running.is_empty(), "still running after the drop: {running:?} of {pids:?}");
}
