//! The gRPC API v1 end to end: a real server on 127.0.0.1:0, the generated
//! tonic clients, generated parts.

mod common;

use common::{TestServer, clients, enroll, raw, request, scratched, texture};
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::{
    self, CreateRecipeRequest, DeleteRecipeRequest, Frame, GetRecipeRequest, HeatmapFormat, HeatmapOptions,
    InspectRequest, InspectResponse, ListRecipesRequest, PixelFormat, RawImage, RecipeSettings,
    UpdateRecipeRequest, Verdict,
};
use tonic::Code;

fn overlaps_scratch(response: &InspectResponse) -> bool {
    response
        .regions
        .iter()
        .any(|r| r.x < 150 && r.x + r.width > 90 && r.y < 153 && r.y + r.height > 120)
}

#[tokio::test]
async fn enroll_then_inspect_a_good_and_a_scratched_part() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    server.wait_serving("loupe.v1.Inspection").await;
    let (mut recipes, mut inspection) = clients(&server).await;

    let recipe = enroll(&mut recipes, "weave").await;
    assert_eq!(recipe.reference_count, 5);
    assert!(recipe.threshold > 0.0);
    assert_eq!(recipe.revision, 2);

    let good = inspection
        .inspect(request("weave", raw(texture(100, 0.3, 1.1)), "good-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        good.verdict,
        Verdict::Pass as i32,
        "score {} / {}",
        good.score,
        good.threshold
    );
    assert_eq!(good.frame_id, "good-1");
    assert_eq!(good.recipe_revision, 2);
    assert!(good.timings.unwrap().inference_us > 0);

    let mut bad = request("weave", raw(scratched()), "bad-1");
    bad.heatmap = Some(HeatmapOptions {
        format: HeatmapFormat::OverlayPng as i32,
        max_size: 128,
        outline_regions: true,
        stamp_verdict: true,
    });
    let bad = inspection.inspect(bad).await.unwrap().into_inner();
    assert_eq!(
        bad.verdict,
        Verdict::Fail as i32,
        "score {} / {}",
        bad.score,
        bad.threshold
    );
    assert!(bad.normalized_score > 1.0);
    assert!(overlaps_scratch(&bad), "regions {:?}", bad.regions);
    let heatmap = bad.heatmap.unwrap();
    assert_eq!(
        (heatmap.width, heatmap.height, heatmap.media_type.as_str()),
        (128, 128, "image/png")
    );
    assert!(heatmap.data.starts_with(b"\x89PNG"));
    // The stamp (red for FAIL, in the corner) and the white outline of the
    // scratch's region, at the overlay's scale.
    let overlay = image::load_from_memory(&heatmap.data).unwrap().to_rgb8();
    assert_eq!(overlay.get_pixel(0, 0).0, [190, 20, 20]);
    let scale = 128.0 / common::PART_SIZE as f64;
    let region = bad
        .regions
        .iter()
        .find(|r| r.y as f64 * scale > 30.0)
        .expect("a region below the stamp");
    let corner = |x: u32, y: u32| {
        overlay
            .get_pixel((f64::from(x) * scale) as u32, (f64::from(y) * scale) as u32)
            .0
    };
    assert_eq!(
        corner(region.x, region.y),
        [255, 255, 255],
        "regions {:?}",
        bad.regions
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn streams_answer_in_order_and_survive_a_bad_frame() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;

    let bad_frame = Frame {
        image: Some(proto::frame::Image::Raw(RawImage {
            width: 32,
            height: 32,
            stride: 0,
            pixel_format: PixelFormat::Rgb8 as i32,
            data: vec![0; 1000].into(),
        })),
    };
    let requests = vec![
        request("weave", raw(texture(101, 0.0, 0.0)), "a"),
        request("weave", raw(scratched()), "b"),
        request("weave", bad_frame, "c"),
        request("nope", raw(texture(102, 0.0, 0.0)), "d"),
        request("weave", raw(texture(103, 1.0, 2.0)), "e"),
    ];
    let mut stream = inspection
        .inspect_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut responses = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        responses.push(response);
    }
    let ids: Vec<&str> = responses.iter().map(|r| r.frame_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    let verdicts: Vec<i32> = responses.iter().map(|r| r.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Pass,
            Verdict::Fail,
            Verdict::Unspecified,
            Verdict::Unspecified,
            Verdict::Pass
        ]
        .map(|v| v as i32)
    );
    let error = responses[2].error.as_ref().unwrap();
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(
        error.message.contains("1000 bytes") && error.message.contains("3072"),
        "{}",
        error.message
    );
    assert_eq!(responses[3].error.as_ref().unwrap().code, Code::NotFound as i32);
    server.stop().await.unwrap();
}

/// Frames that wait together are judged together (batches of the same
/// recipe, with another recipe's frames between them): each answer must
/// still be its own frame's, as it is when the frame comes alone.
#[tokio::test]
async fn frames_in_flight_together_each_get_their_own_answer() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "left").await;
    enroll(&mut recipes, "right").await;
    let frames = [texture(100, 0.3, 1.1), scratched(), texture(101, 1.3, 0.2)];
    let mut alone = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let response = inspection
            .inspect(request("left", raw(frame.clone()), &i.to_string()))
            .await
            .unwrap()
            .into_inner();
        alone.push((response.verdict, response.score));
    }
    assert_eq!(alone[1].0, Verdict::Fail as i32);

    let requests: Vec<InspectRequest> = (0..12)
        .map(|i| {
            let recipe = if i % 4 < 2 { "left" } else { "right" };
            request(recipe, raw(frames[i % 3].clone()), &format!("{i}"))
        })
        .collect();
    let mut stream = inspection
        .inspect_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    while let Some(response) = stream.message().await.unwrap() {
        let i: usize = response.frame_id.parse().unwrap();
        assert_eq!(i, answered, "answers in request order");
        let (verdict, score) = alone[i % 3];
        assert_eq!(response.verdict, verdict, "frame {i}");
        assert!(
            (response.score - score).abs() <= 1e-3 * score,
            "frame {i}: {} in the stream, {score} alone",
            response.score
        );
        answered += 1;
    }
    assert_eq!(answered, 12);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_status_code_the_contract_names() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let (mut recipes, mut inspection) = clients(&server).await;

    // FAILED_PRECONDITION: a recipe without references.
    recipes
        .create_recipe(CreateRecipeRequest {
            name: "empty".into(),
            settings: None,
        })
        .await
        .unwrap();
    let status = inspection
        .inspect(request("empty", raw(texture(1, 0.0, 0.0)), "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("AddReferences"), "{}", status.message());

    // ALREADY_EXISTS, and INVALID_ARGUMENT for bad names and settings.
    let again = CreateRecipeRequest {
        name: "empty".into(),
        settings: None,
    };
    assert_eq!(
        recipes.create_recipe(again).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let bad_name = CreateRecipeRequest {
        name: "a/b".into(),
        settings: None,
    };
    assert_eq!(
        recipes.create_recipe(bad_name).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let bad_settings = CreateRecipeRequest {
        name: "odd".into(),
        settings: Some(RecipeSettings {
            input_width: 250,
            ..Default::default()
        }),
    };
    let status = recipes.create_recipe(bad_settings).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("input_width is 250"),
        "{}",
        status.message()
    );

    // NOT_FOUND.
    let status = recipes
        .get_recipe(GetRecipeRequest { name: "ghost".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = inspection
        .inspect(request("ghost", raw(texture(1, 0.0, 0.0)), "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // INVALID_ARGUMENT: a frame that does not add up, with numbers.
    enroll(&mut recipes, "weave").await;
    let short = Frame {
        image: Some(proto::frame::Image::Raw(RawImage {
            width: 32,
            height: 32,
            stride: 96,
            pixel_format: PixelFormat::Rgb8 as i32,
            data: vec![0; 1000].into(),
        })),
    };
    let status = inspection
        .inspect(request("weave", short, "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("expected 3072"), "{}", status.message());
    let garbage = Frame {
        image: Some(proto::frame::Image::Encoded(b"not an image".to_vec().into())),
    };
    let status = inspection
        .inspect(request("weave", garbage, "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // DEADLINE_EXCEEDED: three streams keep the engine busy for far longer
    // than a 150 ms deadline; once their first answers arrive, the backlog
    // is in the queue, and a frame sent then cannot be reached in time.
    let mut streams = Vec::new();
    for s in 0..3 {
        let frames: Vec<InspectRequest> = (0..20)
            .map(|i| request("weave", raw(texture(s * 100 + i, 0.0, 0.0)), "busy"))
            .collect();
        let mut stream = inspection
            .clone()
            .inspect_stream(tokio_stream::iter(frames))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        streams.push(stream);
    }
    let mut hurried = tonic::Request::new(request("weave", raw(texture(5, 0.0, 0.0)), "x"));
    hurried.set_timeout(std::time::Duration::from_millis(150));
    // Its own connection, so it does not wait behind the streams' bytes.
    let mut fresh = InspectionClient::new(server.channel().await);
    let status = fresh.inspect(hurried).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    for mut stream in streams {
        while stream.message().await.unwrap().is_some() {}
    }

    // UpdateRecipe bumps the revision; DeleteRecipe removes it.
    let updated = recipes
        .update_recipe(UpdateRecipeRequest {
            name: "weave".into(),
            settings: Some(RecipeSettings {
                sensitivity: 2.0,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.revision, 3);
    recipes
        .delete_recipe(DeleteRecipeRequest { name: "weave".into() })
        .await
        .unwrap();
    let names: Vec<String> = recipes
        .list_recipes(ListRecipesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .recipes
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["empty"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn overload_is_answered_with_resource_exhausted_at_once() {
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.limits.max_pending = 1;
    let server = TestServer::start(config).await;
    let (mut recipes, inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;

    let frame = raw(texture(9, 0.0, 0.0));
    let calls = (0..8).map(|i| {
        let mut client = inspection.clone();
        let request = request("weave", frame.clone(), &i.to_string());
        tokio::spawn(async move { client.inspect(request).await })
    });
    let results = futures_join(calls.collect()).await;
    let exhausted = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert!(served >= 1, "{results:?}");
    assert!(exhausted >= 1, "no call was refused: {results:?}");
    assert_eq!(served + exhausted, 8, "{results:?}");
    server.stop().await.unwrap();
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_restart_serves_the_same_verdicts_and_lists_a_damaged_recipe_until_deleted() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    enroll(&mut recipes, "broken").await;
    let before = inspection
        .inspect(request("weave", raw(scratched()), "x"))
        .await
        .unwrap()
        .into_inner();
    server.stop().await.unwrap();

    std::fs::write(data.path().join("recipes/broken/recipe.json"), b"{ half a fi").unwrap();

    let server = TestServer::start(common::config(data.path())).await;
    server.wait_serving("").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    let after = inspection
        .inspect(request("weave", raw(scratched()), "x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.verdict, before.verdict);
    assert_eq!(after.score, before.score);
    assert_eq!(after.threshold, before.threshold);
    assert_eq!(after.recipe_revision, before.recipe_revision);
    // The damaged recipe is listed with its reason, its files are left for a
    // person to look at, it judges nothing, and deleting it works.
    let broken = recipes
        .get_recipe(GetRecipeRequest {
            name: "broken".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(broken.status, proto::RecipeStatus::Damaged as i32);
    assert!(
        broken.status_reason.contains("recipe.json is damaged") && !broken.status_reason.contains('/'),
        "{}",
        broken.status_reason
    );
    assert!(data.path().join("recipes/broken/recipe.json").exists());
    let status = inspection
        .inspect(request("broken", raw(scratched()), "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("damaged"), "{}", status.message());
    recipes
        .delete_recipe(DeleteRecipeRequest {
            name: "broken".into(),
        })
        .await
        .unwrap();
    assert!(!data.path().join("recipes/broken").exists());
    let listed = recipes
        .list_recipes(ListRecipesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.recipes.iter().map(|recipe| recipe.name.as_str()).collect();
    assert_eq!(names, ["weave"]);
    assert_eq!(listed.recipes[0].status, proto::RecipeStatus::Ready as i32);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn add_references_names_the_bad_frame_and_caps_frames_per_call_and_per_recipe() {
    use loupe::proto::AddReferencesRequest;

    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.limits.max_reference_bytes = 3 * 256 * 256 * 3;
    config.limits.max_recipe_frames = 4;
    let server = TestServer::start(config).await;
    let (mut recipes, _) = clients(&server).await;
    recipes
        .create_recipe(CreateRecipeRequest {
            name: "weave".into(),
            settings: None,
        })
        .await
        .unwrap();
    let good = |seed: u64| AddReferencesRequest {
        recipe: "weave".into(),
        frame: Some(raw(texture(seed, seed as f32, 0.0))),
        replace: false,
        name: format!("good-{seed}.png"),
    };
    let broken = AddReferencesRequest {
        recipe: "weave".into(),
        frame: Some(Frame {
            image: Some(proto::frame::Image::Encoded(
                b"not an image at all".to_vec().into(),
            )),
        }),
        replace: false,
        name: "line-2/broken.png".into(),
    };
    let status = recipes
        .add_references(tokio_stream::iter([good(1), broken]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("good frame 1 (\"line-2/broken.png\"): unsupported encoded format"),
        "{}",
        status.message()
    );

    // Four frames are more bytes than one call may bring.
    let status = recipes
        .add_references(tokio_stream::iter((1..5).map(good)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("--max-reference-bytes"),
        "{}",
        status.message()
    );

    // Three frames fit the call, and five the recipe does not.
    let recipe = recipes
        .add_references(tokio_stream::iter((1..4).map(good)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recipe.reference_count, 3);
    let status = recipes
        .add_references(tokio_stream::iter((4..6).map(good)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-recipe-frames"),
        "{}",
        status.message()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_heatmap_that_cannot_fit_an_answer_is_refused_before_the_work_and_lists_leave_masks_out() {
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.limits.max_message_bytes = 256 << 10;
    let server = TestServer::start(config).await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;

    // A 1024x1024 frame in a 3 KB file: its full-size raw map is 1 MiB.
    let mut png = Vec::new();
    image::DynamicImage::new_luma8(1024, 1024)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let frame = Frame {
        image: Some(proto::frame::Image::Encoded(png.into())),
    };
    let mut call = request("weave", frame, "big");
    call.heatmap = Some(HeatmapOptions {
        format: HeatmapFormat::RawU8 as i32,
        max_size: 0,

        ..Default::default()
    });
    let status = inspection.inspect(call.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("a 1024x1024 RAW_U8 heatmap is 1048576 bytes"),
        "{}",
        status.message()
    );
    call.heatmap = Some(HeatmapOptions {
        format: HeatmapFormat::RawU8 as i32,
        max_size: 256,

        ..Default::default()
    });
    let answer = inspection.inspect(call).await.unwrap().into_inner();
    assert_eq!(answer.heatmap.unwrap().width, 256);

    // A mask travels in GetRecipe and in a FULL list, not in a BASIC one.
    let mut mask = Vec::new();
    image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(256, 256, image::Luma([255])))
        .write_to(&mut std::io::Cursor::new(&mut mask), image::ImageFormat::Png)
        .unwrap();
    recipes
        .create_recipe(CreateRecipeRequest {
            name: "masked".into(),
            settings: Some(RecipeSettings {
                mask_png: mask.clone().into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let masks = |list: proto::ListRecipesResponse| -> Vec<usize> {
        list.recipes
            .iter()
            .map(|recipe| recipe.settings.as_ref().unwrap().mask_png.len())
            .collect()
    };
    let basic = recipes.list_recipes(ListRecipesRequest::default()).await.unwrap();
    assert_eq!(masks(basic.into_inner()), [0, 0]);
    let full = recipes
        .list_recipes(ListRecipesRequest {
            view: proto::RecipeView::Full as i32,
        })
        .await
        .unwrap();
    assert_eq!(masks(full.into_inner()), [mask.len(), 0]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_enrollment_whose_features_would_pass_the_budget_is_refused_after_one_frame() {
    // Found by a hostile client: three 1x1 PNGs enrolled into an aligned
    // 2048x2048 recipe took 1 GiB of memory and 17 s of engine time.
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.limits.max_enrollment_bytes = 64 << 20;
    let server = TestServer::start(config).await;
    let (mut recipes, _) = clients(&server).await;
    recipes
        .create_recipe(CreateRecipeRequest {
            name: "huge".into(),
            settings: Some(RecipeSettings {
                match_mode: proto::MatchMode::Aligned as i32,
                input_width: 2048,
                input_height: 2048,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut dot = Vec::new();
    image::DynamicImage::new_rgb8(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut dot), image::ImageFormat::Png)
        .unwrap();
    let messages = (0..3).map(move |i| proto::AddReferencesRequest {
        recipe: "huge".into(),
        frame: Some(Frame {
            image: Some(proto::frame::Image::Encoded(dot.clone().into())),
        }),
        replace: false,
        name: format!("dot-{i}.png"),
    });
    let status = recipes
        .add_references(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("enrolling 3 frames at 2048x2048")
            && status.message().contains("--max-enrollment-bytes"),
        "{}",
        status.message()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_partial_update_changes_only_what_it_names() {
    // Found by a new user: sending only a new sensitivity switched an
    // aligned recipe to global and rebuilt its reference, silently.
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let (mut recipes, mut inspection) = clients(&server).await;
    recipes
        .create_recipe(CreateRecipeRequest {
            name: "fixtured".into(),
            settings: Some(RecipeSettings {
                match_mode: proto::MatchMode::Aligned as i32,
                input_width: 256,
                input_height: 256,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let goods = (0..3).map(|i| proto::AddReferencesRequest {
        recipe: "fixtured".into(),
        frame: Some(raw(texture(i + 1, 0.0, 0.0))),
        replace: false,
        name: String::new(),
    });
    let enrolled = recipes
        .add_references(tokio_stream::iter(goods))
        .await
        .unwrap()
        .into_inner();
    let score = |response: InspectResponse| response.score;
    let part = || request("fixtured", raw(scratched()), "part");
    let before = score(inspection.inspect(part()).await.unwrap().into_inner());

    let update = |settings: RecipeSettings, mask: Option<&[&str]>| UpdateRecipeRequest {
        name: "fixtured".into(),
        settings: Some(settings),
        update_mask: mask.map(|paths| prost_types::FieldMask {
            paths: paths.iter().map(|&p| p.to_owned()).collect(),
        }),
    };
    // No mask: what the message sets changes, nothing else.
    let sharper = recipes
        .update_recipe(update(
            RecipeSettings {
                sensitivity: 2.0,
                ..Default::default()
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let settings = sharper.settings.clone().unwrap();
    assert_eq!(settings.match_mode, proto::MatchMode::Aligned as i32);
    assert_eq!((settings.input_width, settings.input_height), (256, 256));
    assert_eq!(settings.sensitivity, 2.0);
    assert!(!sharper.reference_rebuilt);
    assert_eq!(sharper.revision, enrolled.revision + 1);
    assert!((sharper.threshold - enrolled.threshold / 2.0).abs() < 1e-4 * enrolled.threshold);
    let after = score(inspection.inspect(part()).await.unwrap().into_inner());
    assert_eq!(after, before, "the same reference judges the part");

    // A named field left unset takes its default.
    let reset = recipes
        .update_recipe(update(RecipeSettings::default(), Some(&["settings.sensitivity"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.settings.unwrap().sensitivity, 1.0);
    assert!(!reset.reference_rebuilt);
    assert_eq!(reset.threshold, enrolled.threshold);

    // A wider aligned search changes the calibration scores: rebuilt.
    let wider = recipes
        .update_recipe(update(
            RecipeSettings {
                neighborhood: 2,
                ..Default::default()
            },
            Some(&["neighborhood"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(wider.reference_rebuilt);
    assert_eq!(
        wider.settings.unwrap().match_mode,
        proto::MatchMode::Aligned as i32
    );

    let status = recipes
        .update_recipe(update(RecipeSettings::default(), Some(&["keepaspect"])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("\"keepaspect\", which is not a setting"),
        "{}",
        status.message()
    );
    server.stop().await.unwrap();
}
