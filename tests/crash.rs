//! Recipe changes are all or nothing, whatever happens to the process: the
//! real `loupe serve` binary is killed with SIGKILL at each step of create,
//! add-references, update and delete (the failpoints that
//! `LOUPE_FAILPOINT` names, which only tests set), then restarted on the
//! same data folder. Every recipe must load, none damaged, at the old or
//! the new revision with exactly the scores that revision gives, and
//! nothing half-written may be left in the folder.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{raw, request, scratched, texture};
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{
    self, AddReferencesRequest, CreateRecipeRequest, DeleteRecipeRequest, ListRecipesRequest, RecipeSettings,
    UpdateRecipeRequest,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Longest wait for a line of the server's log.
const PATIENCE: Duration = Duration::from_secs(120);

/// A `loupe serve` process; killed when dropped.
struct Loupe {
    child: Child,
    addr: SocketAddr,
    log: mpsc::UnboundedReceiver<String>,
}

impl Loupe {
    /// Starts the server on `data` (stopping at `failpoint` if given) and
    /// waits until it is SERVING.
    async fn start(data: &Path, failpoint: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_loupe"));
        // Tests run servers side by side: none may take the default
        // metrics port.
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "none",
                "--console-listen",
                "none",
            ])
            .args(["--threads", "1", "--data-dir"])
            .arg(data)
            .env_remove(loupe::failpoint::VAR)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(step) = failpoint {
            command.env(loupe::failpoint::VAR, step);
        }
        let mut child = command.spawn().expect("the loupe binary runs");
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let line = server.wait_for("listening for gRPC").await;
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        server.addr = addr.parse().unwrap();
        let mut health = HealthClient::new(server.channel().await);
        let mut watch = health
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        while let Some(status) = watch.message().await.unwrap() {
            if status.status == ServingStatus::Serving as i32 {
                return server;
            }
        }
        panic!("health stream ended before SERVING");
    }

    /// The first log line from now on that contains `needle`.
    async fn wait_for(&mut self, needle: &str) -> String {
        let wait = async {
            while let Some(line) = self.log.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("the server exited before logging {needle:?}");
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn clients(&self) -> (RecipesClient<Channel>, InspectionClient<Channel>) {
        let channel = self.channel().await;
        (
            RecipesClient::new(channel.clone()).max_encoding_message_size(64 << 20),
            InspectionClient::new(channel),
        )
    }

    /// Waits for the process to exit by itself.
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < PATIENCE, "the server did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reaps the process.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Loupe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The recipe changes under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Change {
    /// Creates recipe "other".
    Create,
    /// Adds two good frames to "part".
    AddReferences,
    /// Changes "part"'s reference size, which rebuilds its reference.
    Update,
    /// Deletes "part".
    Delete,
}

async fn apply(change: Change, recipes: &mut RecipesClient<Channel>) -> Result<(), tonic::Status> {
    match change {
        Change::Create => {
            let request = CreateRecipeRequest {
                name: "other".into(),
                settings: None,
            };
            recipes.create_recipe(request).await.map(drop)
        }
        Change::AddReferences => add_references(recipes, "part", 4..6).await,
        Change::Update => {
            let request = UpdateRecipeRequest {
                name: "part".into(),
                settings: Some(RecipeSettings {
                    reference_size: 500,
                    ..Default::default()
                }),
                update_mask: None,
            };
            recipes.update_recipe(request).await.map(drop)
        }
        Change::Delete => {
            let request = DeleteRecipeRequest { name: "part".into() };
            recipes.delete_recipe(request).await.map(drop)
        }
    }
}

async fn add_references(
    recipes: &mut RecipesClient<Channel>,
    name: &str,
    seeds: std::ops::Range<u64>,
) -> Result<(), tonic::Status> {
    let messages: Vec<AddReferencesRequest> = seeds
        .map(|seed| AddReferencesRequest {
            recipe: name.to_owned(),
            frame: Some(raw(texture(seed, seed as f32 * 1.3, seed as f32 * 0.7))),
            replace: false,
            name: String::new(),
        })
        .collect();
    recipes
        .add_references(tokio_stream::iter(messages))
        .await
        .map(drop)
}

/// What the server says of its recipes: (name, revision, status) and the
/// probe frame's score under "part", if it exists.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    recipes: Vec<(String, u64, i32)>,
    part_score: Option<f32>,
}

async fn observe(server: &Loupe) -> Observed {
    let (mut recipes, mut inspection) = server.clients().await;
    let listed = recipes
        .list_recipes(ListRecipesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let recipes: Vec<_> = listed
        .recipes
        .iter()
        .map(|recipe| (recipe.name.clone(), recipe.revision, recipe.status))
        .collect();
    let part_score = if recipes.iter().any(|(name, ..)| name == "part") {
        let answer = inspection
            .inspect(request("part", raw(scratched()), "probe"))
            .await
            .unwrap()
            .into_inner();
        Some(answer.score)
    } else {
        None
    };
    Observed { recipes, part_score }
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Names in `folder`, at any depth, of what an interrupted change leaves.
fn leftovers(folder: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || name.starts_with(".deleted-") {
            found.push(entry.path().display().to_string());
        } else if entry.file_type().unwrap().is_dir() {
            found.extend(leftovers(&entry.path()));
        }
    }
    found
}

/// The state a change leads to, run to its end on a copy of `base`.
async fn completed(base: &Path, change: Change) -> Observed {
    let data = tempfile::tempdir().unwrap();
    copy_folder(base, data.path());
    let server = Loupe::start(data.path(), None).await;
    let (mut recipes, _) = server.clients().await;
    apply(change, &mut recipes).await.unwrap();
    let after = observe(&server).await;
    server.kill();
    after
}

#[tokio::test]
async fn a_change_killed_at_any_step_leaves_the_old_or_the_new_revision() {
    // The starting point: "part" at revision 2 with three good frames.
    let base = tempfile::tempdir().unwrap();
    let server = Loupe::start(base.path(), None).await;
    let (mut recipes, _) = server.clients().await;
    recipes
        .create_recipe(CreateRecipeRequest {
            name: "part".into(),
            settings: None,
        })
        .await
        .unwrap();
    add_references(&mut recipes, "part", 1..4).await.unwrap();
    let before = observe(&server).await;
    server.kill();
    let ready = proto::RecipeStatus::Ready as i32;
    assert_eq!(before.recipes, [("part".to_owned(), 2, ready)]);

    let mut completions = std::collections::HashMap::new();
    let mut outcomes = Vec::new();
    for (change, step) in [
        (Change::Create, "create.folder"),
        (Change::Create, "write.renaming"),
        (Change::Create, "record.saved"),
        (Change::AddReferences, "write.renaming"),
        (Change::AddReferences, "frames.saved"),
        (Change::AddReferences, "reference.saved"),
        (Change::AddReferences, "record.saved"),
        (Change::Update, "reference.saved"),
        (Change::Update, "record.saved"),
        (Change::Delete, "delete.renamed"),
    ] {
        let after = match completions.get(&change) {
            Some(after) => Observed::clone(after),
            None => {
                let after = completed(base.path(), change).await;
                completions.insert(change, after.clone());
                after
            }
        };
        let data = tempfile::tempdir().unwrap();
        copy_folder(base.path(), data.path());

        let mut server = Loupe::start(data.path(), Some(step)).await;
        let (mut recipes, _) = server.clients().await;
        let call = tokio::spawn(async move { apply(change, &mut recipes).await });
        server.wait_for(&format!("failpoint {step} reached")).await;
        server.kill();
        call.abort();

        let server = Loupe::start(data.path(), None).await;
        let observed = observe(&server).await;
        server.kill();
        assert!(
            observed == before || observed == after,
            "{change:?} killed at {step}: the restarted server shows {observed:?}, \
             neither the old state {before:?} nor the new one {after:?}"
        );
        let left = leftovers(data.path());
        assert!(left.is_empty(), "{change:?} killed at {step} left {left:?}");
        outcomes.push((change, step, observed == after));
    }
    // The commit point decides: killed after the record was saved, the change
    // holds; before it, it never happened.
    for (change, step, held) in outcomes {
        let expected = matches!(step, "record.saved" | "delete.renamed");
        assert_eq!(held, expected, "{change:?} killed at {step}");
    }
}

/// Found by a hostile client: a deadline that passed while UpdateRecipe was
/// writing dropped the handler, the write completed on disk and memory
/// kept the old revision, so the next change named a deleted reference and
/// the recipe was lost at the next start. A change now completes whatever
/// the caller does, and a restart finds what memory had.
#[tokio::test]
async fn a_change_whose_caller_gave_up_lands_in_memory_and_on_disk_alike() {
    use loupe::server::{Event, Events, RecipeChange, SubscribeOptions};

    let data = tempfile::tempdir().unwrap();
    let events = Events::new();
    let mut changes = events.subscribe(SubscribeOptions {
        capacity: 64,
        images: false,
        ..SubscribeOptions::default()
    });
    let server = common::TestServer::start_with_events(common::config(data.path()), events).await;
    let (mut recipes, mut inspection) = common::clients(&server).await;
    common::enroll(&mut recipes, "weave").await;

    let mut update = tonic::Request::new(UpdateRecipeRequest {
        name: "weave".into(),
        settings: Some(RecipeSettings {
            reference_size: 500,
            ..Default::default()
        }),
        update_mask: None,
    });
    update.set_timeout(Duration::from_millis(5));
    let status = recipes.update_recipe(update).await.unwrap_err();
    // The client's own timer fires first (CANCELLED) or the server's
    // (DEADLINE_EXCEEDED); either way the handler is dropped.
    assert!(
        matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{status:?}"
    );
    // The rebuild goes on without its caller; its event says when it is done.
    loop {
        let event = tokio::time::timeout(PATIENCE, changes.recv())
            .await
            .expect("the change completes")
            .expect("the bus is open");
        if let Event::Recipe(change) = event
            && matches!(change.change, RecipeChange::SettingsChanged { rebuilt: true, .. })
        {
            break;
        }
    }
    let in_memory = recipes
        .get_recipe(proto::GetRecipeRequest { name: "weave".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (in_memory.revision, in_memory.settings.unwrap().reference_size),
        (3, 500)
    );
    let score = inspection
        .inspect(request("weave", raw(scratched()), "x"))
        .await
        .unwrap()
        .into_inner()
        .score;
    server.stop().await.unwrap();

    let server = common::TestServer::start(common::config(data.path())).await;
    let (mut recipes, mut inspection) = common::clients(&server).await;
    let on_disk = recipes
        .get_recipe(proto::GetRecipeRequest { name: "weave".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_disk.revision, 3);
    assert_eq!(on_disk.status, proto::RecipeStatus::Ready as i32);
    let again = inspection
        .inspect(request("weave", raw(scratched()), "x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.score, score);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_engine_thread_stops_the_server_with_an_error_for_its_supervisor() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Loupe::start(data.path(), Some("engine.inspect")).await;
    let (mut recipes, mut inspection) = server.clients().await;
    recipes
        .create_recipe(CreateRecipeRequest {
            name: "part".into(),
            settings: None,
        })
        .await
        .unwrap();
    add_references(&mut recipes, "part", 1..4).await.unwrap();
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let status = inspection
        .inspect(request("part", raw(scratched()), "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let cause = server.wait_for("the engine thread panicked").await;
    assert!(cause.contains("failpoint engine.inspect reached"), "{cause}");
    // Health says so before the server goes.
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let exit = server.exit_status().await;
    assert!(!exit.success(), "the server exited with {exit}");
}

#[tokio::test]
async fn a_second_server_on_the_same_data_folder_exits_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    let first = Loupe::start(data.path(), None).await;
    let second = Command::new(env!("CARGO_BIN_EXE_loupe"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "none",
            "--console-listen",
            "none",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("another Loupe server uses the data folder"),
        "{stderr}"
    );
    // The first is unharmed.
    let observed = observe(&first).await;
    assert!(observed.recipes.is_empty());
    first.kill();
}
