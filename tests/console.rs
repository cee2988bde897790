//! The web console of a real server: its JSON API and live feed over plain
//! HTTP (recipes with their counts and threshold, results and their
//! pictures from the audit trail, server-sent events that replay and
//! resume), and the pages in a real headless browser: Debian's chromium
//! driven through chromedriver by a WebDriver client, skipped (saying so)
//! where they are not installed. The browser test writes a screenshot of
//! each page under `target/console-screenshots/`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Fronts, TestServer, clients, enroll, http_get, raw, request, scratched, texture};
use loupe::audit::AuditConfig;
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{AddReferencesRequest, CreateRecipeRequest, RecipeSettings, Verdict};
use loupe::server::Events;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// A server with the console, and the audit trail when `audit` is given.
async fn start(data_dir: &Path, audit: Option<AuditConfig>) -> (TestServer, SocketAddr) {
    let mut config = common::config(data_dir);
    config.audit = audit;
    let fronts = Fronts {
        metrics: false,
        console: true,
    };
    let server = TestServer::start_with_fronts(config, Events::new(), fronts).await;
    server.wait_serving("loupe.v1.Inspection").await;
    let console = server.console.unwrap();
    (server, console)
}

async fn json(console: SocketAddr, path: &str) -> (u16, Value) {
    let (status, head, body) = http_get(console, path).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{path}: {head}"
    );
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

async fn inspect(inspection: &mut InspectionClient<Channel>, rgb: Vec<u8>, frame_id: &str) -> i32 {
    inspection
        .inspect(request("weave", raw(rgb), frame_id))
        .await
        .unwrap()
        .into_inner()
        .verdict
}

/// Good part `i`: the weave at one of five places (as parts in a fixture
/// are), with sensor noise of its own (a well-mixed seed).
fn good(i: u64) -> Vec<u8> {
    let place = (i % 5) as f32;
    texture(
        i.wrapping_add(7).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1,
        place * 0.7,
        place * 0.4,
    )
}

/// Creates recipe "weave" on 20 good parts: enough calibration scores for
/// the drift watch's basis (at a 128x128 input, to keep a debug build's
/// enrollment short).
async fn enroll_twenty(recipes: &mut RecipesClient<Channel>) {
    recipes
        .create_recipe(CreateRecipeRequest {
            name: "weave".to_owned(),
            settings: Some(RecipeSettings {
                input_width: 128,
                input_height: 128,
                ..RecipeSettings::default()
            }),
        })
        .await
        .unwrap();
    let messages: Vec<AddReferencesRequest> = (0..20)
        .map(|i| AddReferencesRequest {
            recipe: "weave".to_owned(),
            frame: Some(raw(good(i))),
            replace: false,
            name: format!("good-{i}"),
        })
        .collect();
    recipes
        .add_references(tokio_stream::iter(messages))
        .await
        .unwrap();
}

/// Three good parts and a scratched one, checked as they are judged.
async fn judge_four(inspection: &mut InspectionClient<Channel>) {
    for n in 0..3 {
        let good = inspect(inspection, good(100 + n), &format!("good-{n}")).await;
        assert_eq!(good, Verdict::Pass as i32, "good-{n}");
    }
    assert_eq!(
        inspect(inspection, scratched(), "scratch-0").await,
        Verdict::Fail as i32
    );
}

/// Reads `/api/recipes` until the recipe's counts reach `pass` and `fail`
/// (the console counts on a task of its own), for at most 30 s.
async fn recipe_counted(console: SocketAddr, pass: u64, fail: u64) -> Value {
    let started = Instant::now();
    loop {
        let (status, recipes) = json(console, "/api/recipes").await;
        assert_eq!(status, 200);
        let recipe = recipes[0].clone();
        if recipe["counts"]["pass"] == pass && recipe["counts"]["fail"] == fail {
            return recipe;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "counts: {recipe}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An open `GET /api/feed` stream, read as it comes.
struct FeedReader {
    stream: tokio::net::TcpStream,
    text: String,
}

impl FeedReader {
    async fn open(console: SocketAddr, last_event_id: Option<u64>) -> Self {
        let mut stream = tokio::net::TcpStream::connect(console).await.unwrap();
        let resume = last_event_id.map_or_else(String::new, |id| format!("Last-Event-ID: {id}\r\n"));
        let ask =
            format!("GET /api/feed HTTP/1.1\r\nHost: {console}\r\nAccept: text/event-stream\r\n{resume}\r\n");
        stream.write_all(ask.as_bytes()).await.unwrap();
        Self {
            stream,
            text: String::new(),
        }
    }

    /// Reads until the answer's status line is in; its code.
    async fn status(&mut self) -> u16 {
        let mut buffer = [0u8; 1024];
        while !self.text.contains("\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut buffer))
                .await
                .expect("no answer for 30 s")
                .unwrap();
            assert!(read > 0, "closed: {}", self.text);
            self.text.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
        self.text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// Reads until the feed has sent `count` results; their data, in order.
    async fn results(&mut self, count: usize) -> Vec<Value> {
        let mut buffer = [0u8; 8192];
        loop {
            let items: Vec<Value> = self
                .text
                .split("\n\n")
                .filter_map(|event| {
                    let data = event.lines().find_map(|line| line.strip_prefix("data: "))?;
                    event
                        .contains("event: result")
                        .then(|| serde_json::from_str(data).unwrap())
                })
                .collect();
            if items.len() >= count {
                return items;
            }
            let read = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut buffer))
                .await
                .expect("the feed sent nothing for 30 s")
                .unwrap();
            assert!(read > 0, "the feed closed: {}", self.text);
            self.text.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    }
}

#[tokio::test]
async fn the_api_shows_recipes_results_and_pictures_and_the_feed_replays_and_resumes() {
    let data = tempfile::tempdir().unwrap();
    // The default sample: the first PASS's pictures, then every 100th.
    let (server, console) = start(data.path(), Some(AuditConfig::default())).await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    judge_four(&mut inspection).await;

    let recipe = recipe_counted(console, 3, 1).await;
    assert_eq!(recipe["name"], "weave");
    assert_eq!(recipe["status"], "ready");
    assert_eq!(recipe["threshold_source"], "calibrated");
    assert!(recipe["threshold"].as_f64().unwrap() > 0.0, "{recipe}");
    assert_eq!(recipe["calibration"]["frames_scored"], 5);
    // Five good frames: too few calibration scores for the drift statistic.
    assert_eq!(recipe["drift"]["state"], "UNAVAILABLE");
    assert!(
        recipe["drift"]["reason"]
            .as_str()
            .unwrap()
            .contains("calibration scores"),
        "{recipe}"
    );
    assert_eq!(recipe["settings"]["match_mode"], "global");
    assert!(
        recipe["settings"].get("mask_png").is_none(),
        "the mask is shown as its size"
    );

    // The feed replays what it kept, in order, then sends each new verdict.
    let mut feed = FeedReader::open(console, None).await;
    let replayed = feed.results(4).await;
    let frames: Vec<&str> = replayed
        .iter()
        .map(|item| item["frame_id"].as_str().unwrap())
        .collect();
    assert_eq!(frames, ["good-0", "good-1", "good-2", "scratch-0"]);
    assert!(
        replayed.iter().all(|item| item["id"].is_string()),
        "trail ids: {replayed:?}"
    );
    let pictures: Vec<bool> = replayed
        .iter()
        .map(|item| item["pictures"].as_bool().unwrap())
        .collect();
    assert_eq!(pictures, [true, false, false, true], "the first PASS, every FAIL");
    inspect(&mut inspection, scratched(), "scratch-1").await;
    let live = feed.results(5).await;
    assert_eq!(live[4]["frame_id"], "scratch-1");
    assert_eq!(live[4]["verdict"], "FAIL");
    assert_eq!(live[4]["seq"], 5);
    // A page that reconnects gets only what it missed.
    let mut resumed = FeedReader::open(console, Some(3)).await;
    let missed = resumed.results(2).await;
    let seqs: Vec<u64> = missed.iter().map(|item| item["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 5]);

    // Results, newest first, from the trail; one with its pictures.
    let (status, results) = json(console, "/api/results?recipe=weave&limit=10").await;
    assert_eq!(status, 200);
    let frames: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["frame_id"].as_str().unwrap())
        .collect();
    assert_eq!(frames, ["scratch-1", "scratch-0", "good-2", "good-1", "good-0"]);
    let (_, fails) = json(console, "/api/results?verdict=FAIL").await;
    assert_eq!(fails.as_array().unwrap().len(), 2);
    let id = fails[0]["id"].as_str().unwrap();
    let (status, result) = json(console, &format!("/api/results/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(result["verdict"], "FAIL");
    assert_eq!(result["pictures"], "kept");
    assert!(result["score"].as_f64().unwrap() > result["threshold"].as_f64().unwrap());
    let region = &result["regions"][0];
    // The scratch runs from (90, 120) 60 px right and 30 down.
    let (x, y) = (region["x"].as_u64().unwrap(), region["y"].as_u64().unwrap());
    let (w, h) = (
        region["width"].as_u64().unwrap(),
        region["height"].as_u64().unwrap(),
    );
    assert!(x < 150 && x + w > 90 && y < 153 && y + h > 120, "{region}");
    for picture in ["frame.png", "overlay.png"] {
        let (status, head, body) = http_get(console, &format!("/api/results/{id}/{picture}")).await;
        assert_eq!(status, 200, "{picture}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("content-type: image/png"),
            "{head}"
        );
        // The body is read as text: the 0x89 of the signature comes back as U+FFFD.
        assert!(body.starts_with("\u{FFFD}PNG\r\n"), "{picture}");
    }
    let unsampled = results[3]["id"].as_str().unwrap();
    let (status, error) = json(console, &format!("/api/results/{unsampled}/overlay.png")).await;
    assert_eq!(status, 404);
    assert!(
        error["error"].as_str().unwrap().contains("not sampled"),
        "{error}"
    );

    // Bad input is refused with a reason.
    let (status, error) = json(console, "/api/results?verdict=maybe").await;
    assert_eq!(status, 400);
    assert!(
        error["error"].as_str().unwrap().contains("PASS or FAIL"),
        "{error}"
    );
    let (status, error) = json(console, "/api/recipes/nothing").await;
    assert_eq!(status, 404, "{error}");
    let (status, _) = json(console, "/api/results/12-34").await;
    assert_eq!(status, 404);

    // Every page is the one document, which loads the compiled-in script.
    for page in ["/", "/recipes/weave", &format!("/results/{id}")] {
        let (status, head, body) = http_get(console, page).await;
        assert_eq!(status, 200, "{page}");
        assert!(head.to_ascii_lowercase().contains("text/html"), "{head}");
        assert!(body.contains(r#"<script src="/console.js">"#), "{page}");
    }
    let (status, _, script) = http_get(console, "/console.js").await;
    assert_eq!(status, 200);
    assert!(script.contains("new EventSource(\"/api/feed\")"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_the_audit_trail_the_console_has_recipes_and_the_feed_but_no_results() {
    let data = tempfile::tempdir().unwrap();
    let (server, console) = start(data.path(), None).await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    assert_eq!(
        inspect(&mut inspection, scratched(), "scratch-0").await,
        Verdict::Fail as i32
    );
    recipe_counted(console, 0, 1).await;
    let mut first = FeedReader::open(console, None).await;
    let items = first.results(1).await;
    let item = &items[0];
    assert_eq!(item["frame_id"], "scratch-0");
    assert!(item["id"].is_null(), "no trail, no id: {item}");
    let (status, error) = json(console, "/api/results").await;
    assert_eq!(status, 503);
    assert!(
        error["error"].as_str().unwrap().contains("--audit off"),
        "{error}"
    );
    // Open pages are capped: with the page above still open, the one past
    // the cap is told so.
    let mut pages = vec![first];
    for _ in 0..loupe::console::MAX_LIVE_PAGES - 1 {
        let mut page = FeedReader::open(console, None).await;
        assert_eq!(page.status().await, 200);
        pages.push(page);
    }
    let (status, error) = json(console, "/api/feed").await;
    assert_eq!(status, 503);
    assert!(error["error"].as_str().unwrap().contains("close one"), "{error}");
    drop(pages);
    server.stop().await.unwrap();
}

// ---- the pages in a real browser ------------------------------------------

/// A program on the PATH or in /usr/bin.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|folder| folder.join(name))
        .find(|candidate| candidate.is_file())
}

/// chromedriver on a port of its choosing; killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    fn start(program: &Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(program)
            .arg("--port=0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = child.stdout.take().unwrap();
        let port = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let rest = line.split("started successfully on port ").nth(1)?;
                rest.trim_end_matches('.').parse::<u16>().ok()
            })
            .expect("chromedriver says its port");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn screenshots() -> PathBuf {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&folder).unwrap();
    folder
}

/// Waits until the page says it has drawn (`body[data-ready]`).
async fn drawn(browser: &fantoccini::Client) {
    let ready = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(fantoccini::Locator::Css("body[data-ready]"))
        .await
        .unwrap();
    assert_eq!(
        ready.attr("data-ready").await.unwrap().as_deref(),
        Some("true"),
        "{}",
        browser.source().await.unwrap()
    );
}

/// Runs `script` until it returns true, for at most 10 s.
async fn until(browser: &fantoccini::Client, script: &str) {
    let started = Instant::now();
    while browser.execute(script, Vec::new()).await.unwrap().as_bool() != Some(true) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never true: {script}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_pages_in_a_headless_browser_show_the_recipe_the_live_feed_a_result_and_the_chart() {
    let (Some(chromium), Some(chromedriver)) = (program("chromium"), program("chromedriver")) else {
        println!(
            "SKIPPED: the console's browser test needs Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver); `.ci/run` installs them"
        );
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let (server, console) = start(data.path(), Some(AuditConfig::default())).await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll_twenty(&mut recipes).await;
    judge_four(&mut inspection).await;
    let recipe = recipe_counted(console, 3, 1).await;
    assert_eq!(recipe["drift"]["state"], "OK", "{recipe}");
    assert_eq!(recipe["drift"]["parts_seen"], 3, "PASS parts only");

    let driver = Driver::start(&chromedriver);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,768"],
        }),
    );
    let browser = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a chromium session");
    let shots = screenshots();
    let base = format!("http://{console}");

    // The overview: the recipe with its counts, the feed with the verdicts.
    browser.goto(&format!("{base}/")).await.unwrap();
    drawn(&browser).await;
    let row = browser
        .find(fantoccini::Locator::Css(r#"#recipes tr[data-recipe="weave"]"#))
        .await
        .unwrap();
    let text = row.text().await.unwrap();
    assert!(text.contains("calibrated") && text.contains("OK"), "{text}");
    let counts = |class: &'static str| {
        let row = row.clone();
        async move {
            row.find(fantoccini::Locator::Css(class))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        (counts(".pass-count").await, counts(".fail-count").await),
        ("3".into(), "1".into())
    );
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(fantoccini::Locator::Css(r#"#feed li[data-frame="scratch-0"]"#))
        .await
        .unwrap();

    // The live feed: a new verdict appears within a second of the call.
    browser
        .execute(
            r#"window.seenAt = null;
               new MutationObserver(() => {
                 if (!window.seenAt && document.querySelector('#feed li[data-frame="scratch-live"]')) window.seenAt = Date.now();
               }).observe(document.getElementById("feed"), { childList: true });"#,
            Vec::new(),
        )
        .await
        .unwrap();
    let called = unix_ms();
    assert_eq!(
        inspect(&mut inspection, scratched(), "scratch-live").await,
        Verdict::Fail as i32
    );
    let answered = unix_ms();
    let item = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(fantoccini::Locator::Css(r#"#feed li[data-frame="scratch-live"]"#))
        .await
        .unwrap();
    let seen = browser
        .execute("return window.seenAt;", Vec::new())
        .await
        .unwrap();
    let shown_after = seen.as_i64().expect("the observer saw the item") - called;
    println!(
        "live feed: shown {shown_after} ms after the Inspect call was made ({} ms after its answer)",
        seen.as_i64().unwrap() - answered
    );
    assert!(shown_after < 1000, "shown {shown_after} ms after the call");
    assert_eq!(item.attr("data-verdict").await.unwrap().as_deref(), Some("FAIL"));
    // Its thumbnail is the kept overlay.
    until(
        &browser,
        r#"const img = document.querySelector('#feed li[data-frame="scratch-live"] img.thumb');
           return !!img && img.complete && img.naturalWidth > 0;"#,
    )
    .await;
    std::fs::write(shots.join("overview.png"), browser.screenshot().await.unwrap()).unwrap();

    // The result page, from the feed: verdict, score, regions, pictures.
    item.find(fantoccini::Locator::Css("a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    drawn(&browser).await;
    let verdict = browser.find(fantoccini::Locator::Id("verdict")).await.unwrap();
    assert_eq!(verdict.text().await.unwrap(), "FAIL");
    let score = browser
        .find(fantoccini::Locator::Id("score"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(score.contains("x threshold"), "{score}");
    let regions = browser
        .find_all(fantoccini::Locator::Css("#regions tbody tr"))
        .await
        .unwrap();
    assert!(!regions.is_empty(), "the scratch's region is listed");
    let pictures_loaded = r#"return ["frame", "overlay"].every((id) => {
        const img = document.getElementById(id);
        return img && img.complete && img.naturalWidth === 256;
      }) && document.querySelectorAll(".picture .box").length > 0;"#;
    until(&browser, pictures_loaded).await;
    std::fs::write(shots.join("result.png"), browser.screenshot().await.unwrap()).unwrap();

    // The recipe page: one point a result, the threshold line, the band.
    browser.goto(&format!("{base}/recipes/weave")).await.unwrap();
    drawn(&browser).await;
    let points = browser
        .find_all(fantoccini::Locator::Css("#chart circle"))
        .await
        .unwrap();
    assert_eq!(points.len(), 5, "four judged first, one live");
    let fails = browser
        .find_all(fantoccini::Locator::Css("#chart circle.fail"))
        .await
        .unwrap();
    assert_eq!(fails.len(), 2);
    browser
        .find(fantoccini::Locator::Id("threshold-line"))
        .await
        .unwrap();
    browser
        .find(fantoccini::Locator::Css("#chart rect.band-watch"))
        .await
        .expect("the drift band is drawn");
    let drift = browser
        .find(fantoccini::Locator::Id("drift"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(drift.contains("OK"), "{drift}");
    std::fs::write(shots.join("recipe.png"), browser.screenshot().await.unwrap()).unwrap();
    println!("console screenshots: {}", shots.display());

    browser.close().await.unwrap();
    drop(driver);
    server.stop().await.unwrap();
}
