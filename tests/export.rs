//! Recipes that move between machines: ExportRecipe on one real server,
//! ImportRecipe on a second one with its own data folder, and the same
//! frames judged the same on both.

mod common;

use bytes::Bytes;
use common::{TestServer, clients, enroll, raw, request, scratched, texture};
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{
    self, ExportRecipeRequest, InspectResponse, ListRecipesRequest, RecipeChunk, RecipeSettings,
    UpdateRecipeRequest, Verdict,
};
use loupe::store::bundle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The recipe file ExportRecipe streams, checked chunk by chunk.
async fn export(recipes: &mut RecipesClient<Channel>, name: &str) -> Vec<u8> {
    let mut stream = recipes
        .export_recipe(ExportRecipeRequest {
            name: name.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("at least one chunk");
    assert_eq!(first.name, name);
    let total = first.total_size as usize;
    let mut file = first.data.to_vec();
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(
            chunk.data.len() <= 1 << 20,
            "a chunk of {} bytes",
            chunk.data.len()
        );
        assert_eq!((chunk.name.as_str(), chunk.total_size), ("", 0));
        file.extend_from_slice(&chunk.data);
    }
    assert_eq!(file.len(), total);
    file
}

/// Sends `file` to ImportRecipe in 1 MiB chunks, announcing `total_size`.
async fn import_sized(
    recipes: &mut RecipesClient<Channel>,
    file: &[u8],
    name: &str,
    total_size: u64,
) -> Result<proto::Recipe, Status> {
    let file = Bytes::copy_from_slice(file);
    let pieces = file.len().div_ceil(1 << 20).max(1);
    let name = name.to_owned();
    let chunks: Vec<RecipeChunk> = (0..pieces)
        .map(|index| RecipeChunk {
            data: file.slice(index << 20..((index + 1) << 20).min(file.len())),
            name: if index == 0 { name.clone() } else { String::new() },
            total_size: if index == 0 { total_size } else { 0 },
        })
        .collect();
    recipes
        .import_recipe(tokio_stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

async fn import(
    recipes: &mut RecipesClient<Channel>,
    file: &[u8],
    name: &str,
) -> Result<proto::Recipe, Status> {
    import_sized(recipes, file, name, file.len() as u64).await
}

/// A good part and a scratched one, judged by `recipe`.
async fn judge(server: &TestServer, recipe: &str) -> Vec<InspectResponse> {
    let (_, mut inspection) = clients(server).await;
    let mut answers = Vec::new();
    for (frame, id) in [(texture(100, 0.3, 1.1), "good"), (scratched(), "bad")] {
        let answer = inspection
            .inspect(request(recipe, raw(frame), id))
            .await
            .unwrap()
            .into_inner();
        answers.push(answer);
    }
    assert_eq!(answers[0].verdict, Verdict::Pass as i32, "{:?}", answers[0]);
    assert_eq!(answers[1].verdict, Verdict::Fail as i32, "{:?}", answers[1]);
    answers
}

fn assert_same_judgement(here: &[InspectResponse], there: &[InspectResponse]) {
    for (a, b) in here.iter().zip(there) {
        assert_eq!(a.verdict, b.verdict, "{} vs {}", a.frame_id, b.frame_id);
        assert_eq!(a.threshold, b.threshold);
        assert!(
            (a.score - b.score).abs() <= 1e-5 * a.score.abs().max(1.0),
            "{}: score {} here, {} there",
            a.frame_id,
            a.score,
            b.score
        );
        assert_eq!(a.regions.len(), b.regions.len(), "{}", a.frame_id);
    }
}

fn assert_refused(result: Result<proto::Recipe, Status>, code: Code, says: &str) {
    let status = result.expect_err("the import should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(says),
        "{:?} does not say {says:?}",
        status.message()
    );
}

#[tokio::test]
async fn a_recipe_moves_to_a_second_server_and_judges_the_same() {
    let lab_data = tempfile::tempdir().unwrap();
    let lab = TestServer::start(common::config(lab_data.path())).await;
    let (mut lab_recipes, _) = clients(&lab).await;
    enroll(&mut lab_recipes, "weave").await;
    // A setting that is not the default travels too.
    lab_recipes
        .update_recipe(UpdateRecipeRequest {
            name: "weave".into(),
            settings: Some(RecipeSettings {
                sensitivity: 1.25,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["sensitivity".into()],
            }),
        })
        .await
        .unwrap();
    let lab_answers = judge(&lab, "weave").await;
    let file = export(&mut lab_recipes, "weave").await;

    let line_data = tempfile::tempdir().unwrap();
    let line = TestServer::start(common::config(line_data.path())).await;
    let (mut line_recipes, _) = clients(&line).await;
    let imported = import(&mut line_recipes, &file, "").await.unwrap();
    assert_eq!(imported.name, "weave");
    assert_eq!(imported.revision, 1);
    assert_eq!(imported.reference_count, 5);
    assert_eq!(imported.settings.as_ref().unwrap().sensitivity, 1.25);
    assert_eq!(imported.status, proto::RecipeStatus::Ready as i32);
    assert_same_judgement(&lab_answers, &judge(&line, "weave").await);

    // Under a new name, and the same name again is refused.
    let renamed = import(&mut line_recipes, &file, "weave-line2").await.unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.threshold),
        ("weave-line2", imported.threshold)
    );
    assert_refused(
        import(&mut line_recipes, &file, "").await,
        Code::AlreadyExists,
        "a recipe named \"weave\" exists",
    );
    assert_refused(
        import(&mut line_recipes, &file, "weave-line2").await,
        Code::AlreadyExists,
        "weave-line2",
    );

    // The import is in the data folder, not only in memory: a restart
    // serves it, and it judges the same.
    line.stop().await.unwrap();
    let line = TestServer::start(common::config(line_data.path())).await;
    assert_same_judgement(&lab_answers, &judge(&line, "weave-line2").await);
    // And it exports what it was imported from.
    let (mut line_recipes, _) = clients(&line).await;
    let again = bundle::decode(&export(&mut line_recipes, "weave").await.into()).unwrap();
    assert_eq!(again, bundle::decode(&Bytes::from(file)).unwrap());
    line.stop().await.unwrap();
    lab.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_recipe_file_is_refused_and_leaves_nothing_behind() {
    let lab_data = tempfile::tempdir().unwrap();
    let lab = TestServer::start(common::config(lab_data.path())).await;
    let (mut lab_recipes, _) = clients(&lab).await;
    enroll(&mut lab_recipes, "weave").await;
    let file = export(&mut lab_recipes, "weave").await;
    let missing = lab_recipes
        .export_recipe(ExportRecipeRequest {
            name: "nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    let line_data = tempfile::tempdir().unwrap();
    let line = TestServer::start(common::config(line_data.path())).await;
    let (mut line_recipes, _) = clients(&line).await;

    let mut flipped = file.clone();
    flipped[file.len() / 2] ^= 0x10;
    assert_refused(
        import(&mut line_recipes, &flipped, "").await,
        Code::InvalidArgument,
        "SHA-256 does not match",
    );
    // Cut short, announced whole: the stream ends early.
    assert_refused(
        import_sized(
            &mut line_recipes,
            &file[..file.len() - 100],
            "",
            file.len() as u64,
        )
        .await,
        Code::InvalidArgument,
        "truncated",
    );
    // Cut short, announced as cut: the file's own header says more.
    assert_refused(
        import(&mut line_recipes, &file[..file.len() - 100], "").await,
        Code::InvalidArgument,
        "truncated",
    );
    let mut newer = file.clone();
    newer[8..12].copy_from_slice(&(bundle::FORMAT_VERSION + 1).to_le_bytes());
    assert_refused(
        import(&mut line_recipes, &newer, "").await,
        Code::InvalidArgument,
        "newer Loupe",
    );
    assert_refused(
        import(&mut line_recipes, b"\x89PNG\r\n\x1a\n not a recipe", "").await,
        Code::InvalidArgument,
        "not a Loupe recipe file",
    );
    assert_refused(
        import_sized(&mut line_recipes, &file, "", 0).await,
        Code::InvalidArgument,
        "total_size",
    );
    assert_refused(
        import_sized(&mut line_recipes, &file, "", u64::MAX / 2).await,
        Code::ResourceExhausted,
        "imports at most",
    );
    assert_refused(
        import(&mut line_recipes, &file, "../escape").await,
        Code::InvalidArgument,
        "'/'",
    );

    // A reference built by another model means nothing to this one.
    let mut contents = bundle::decode(&Bytes::from(file.clone())).unwrap();
    contents.reference.as_mut().unwrap().model_id = "sha256:another-model".into();
    let foreign = bundle::encode(&contents).unwrap();
    assert_refused(
        import(&mut line_recipes, &foreign, "").await,
        Code::FailedPrecondition,
        "another model",
    );

    let listed = line_recipes
        .list_recipes(ListRecipesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.recipes.is_empty(), "{:?}", listed.recipes);
    let leftovers: Vec<_> = std::fs::read_dir(line_data.path().join("recipes"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The good file still imports after all that.
    import(&mut line_recipes, &file, "").await.unwrap();
    line.stop().await.unwrap();
    lab.stop().await.unwrap();
}
