//! The command-line client: `loupe recipe ...` and `loupe inspect`, over the
//! same gRPC API an integrator uses, so the service can be tried without
//! writing code.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::{ClientConfig, InspectArgs, RecipeAction};
use crate::engine::RecipeSettings;
use crate::grpc::client;
use crate::proto;
use crate::proto::convert::{encoded_frame, settings_from_proto, settings_to_proto};
use crate::proto::inspection_client::InspectionClient;
use crate::proto::recipes_client::RecipesClient;

#[allow(clippy::needless_pass_by_value)] // used as `map_err(status)`
fn status(error: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(client::describe(&error))
}

fn print_recipe(recipe: &proto::Recipe) {
    let settings = settings_from_proto(recipe.settings.clone()).unwrap_or_default();
    println!(
        "{}  revision {}  references {}  threshold {:.4}  input {}  mode {}",
        recipe.name,
        recipe.revision,
        recipe.reference_count,
        recipe.threshold,
        settings.input_rule(),
        settings.match_mode
    );
    if recipe.status == proto::RecipeStatus::Damaged as i32 {
        println!(
            "    DAMAGED: {}; delete it with `loupe recipe delete {}` and create it again",
            recipe.status_reason, recipe.name
        );
    }
    if let Some(calibration) = &recipe.calibration {
        let expected = calibration
            .expected_false_reject_rate
            .map_or("no rate can be stated".to_owned(), |rate| {
                format!("expected false rejects at most {:.2} %", 100.0 * rate)
            });
        let in_force = match settings.threshold {
            Some(fixed) => format!("not in force: the settings fix the threshold at {fixed}"),
            None => format!("sensitivity {}", settings.sensitivity),
        };
        println!(
            "    calibrated threshold {:.4} from {} good-frame scores ({}), target false rejects {:.2} %, {expected}; {in_force}",
            calibration.calibrated_threshold,
            calibration.frames_scored,
            calibration.rule,
            100.0 * calibration.target_false_reject_rate,
        );
    }
}

/// Runs `loupe recipe ACTION` on the server `server` resolves to.
pub async fn recipe(server: &ClientConfig, action: RecipeAction) -> Result<()> {
    let mut client = RecipesClient::new(client::connect(server).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    match action {
        RecipeAction::Create { name, settings } => {
            let settings = settings.apply(RecipeSettings::default())?;
            let recipe = client
                .create_recipe(proto::CreateRecipeRequest {
                    name,
                    settings: Some(settings_to_proto(&settings)),
                })
                .await
                .map_err(status)?;
            print_recipe(recipe.get_ref());
        }
        RecipeAction::Update { name, settings } => {
            // Only the flags given change (the server applies them to the
            // current settings under its lock).
            let update = settings.update()?;
            if update.settings.is_empty() {
                bail!("nothing to change: give a setting flag or --settings FILE");
            }
            let paths = update
                .settings
                .iter()
                .flat_map(|setting| setting.fields().iter().map(|&field| field.to_owned()))
                .collect();
            let recipe = client
                .update_recipe(proto::UpdateRecipeRequest {
                    name,
                    settings: Some(settings_to_proto(&update.values)),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_recipe(&recipe);
            if recipe.reference_rebuilt {
                println!("    the reference was rebuilt from the stored good frames");
            }
        }
        RecipeAction::List => {
            let list = client
                .list_recipes(proto::ListRecipesRequest::default())
                .await
                .map_err(status)?;
            if list.get_ref().recipes.is_empty() {
                println!("no recipes");
            }
            list.get_ref().recipes.iter().for_each(print_recipe);
        }
        RecipeAction::Show { name, json } => {
            let recipe = client
                .get_recipe(proto::GetRecipeRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                let settings = settings_from_proto(recipe.settings)?;
                println!("{}", serde_json::to_string_pretty(&settings)?);
            } else {
                print_recipe(&recipe);
            }
        }
        RecipeAction::Delete { name } => {
            client
                .delete_recipe(proto::DeleteRecipeRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted {name}");
        }
        RecipeAction::AddRefs { name, files, replace } => {
            let mut messages = Vec::with_capacity(files.len());
            for (index, file) in files.iter().enumerate() {
                messages.push(proto::AddReferencesRequest {
                    recipe: if index == 0 { name.clone() } else { String::new() },
                    frame: Some(read_frame(file)?),
                    replace: index == 0 && replace,
                    name: file.display().to_string(),
                });
            }
            let recipe = client
                .add_references(tokio_stream::iter(messages))
                .await
                .map_err(status)?;
            print_recipe(recipe.get_ref());
        }
    }
    Ok(())
}

fn read_frame(file: &Path) -> Result<proto::Frame> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(encoded_frame(bytes))
}

/// Runs `loupe inspect` on the server `server` resolves to.
pub async fn inspect(server: &ClientConfig, args: InspectArgs) -> Result<()> {
    let mut client = InspectionClient::new(client::connect(server).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    if let Some(dir) = &args.heatmap {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut failures = 0;
    for file in &args.files {
        let heatmap = args.heatmap.as_ref().map(|_| proto::HeatmapOptions {
            format: proto::HeatmapFormat::OverlayPng as i32,
            max_size: 0,
        });
        let request = proto::InspectRequest {
            recipe: args.recipe.clone(),
            frame: Some(read_frame(file)?),
            frame_id: file.display().to_string(),
            heatmap,
        };
        let response = match client.inspect(request).await {
            Ok(response) => response.into_inner(),
            Err(error) => {
                println!("{}: ERROR {}", file.display(), status(error));
                failures += 1;
                continue;
            }
        };
        let verdict = if response.verdict == proto::Verdict::Fail as i32 {
            "FAIL"
        } else {
            "PASS"
        };
        let total_ms = response
            .timings
            .as_ref()
            .map_or(0.0, |t| t.total_us as f64 / 1000.0);
        println!(
            "{}: {verdict} score {:.4} ({:.2} x threshold {:.4}) {} region(s) {total_ms:.1} ms",
            file.display(),
            response.score,
            response.normalized_score,
            response.threshold,
            response.regions.len()
        );
        for region in &response.regions {
            println!(
                "    region x {} y {} {}x{} area {} max {:.4} mean {:.4}",
                region.x,
                region.y,
                region.width,
                region.height,
                region.area,
                region.max_score,
                region.mean_score
            );
        }
        if let (Some(dir), Some(heatmap)) = (&args.heatmap, &response.heatmap) {
            let stem = file
                .file_stem()
                .map_or("frame".into(), |s| s.to_string_lossy().into_owned());
            let path = dir.join(format!("{stem}.overlay.png"));
            std::fs::write(&path, &heatmap.data)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} file(s) could not be inspected",
            args.files.len()
        );
    }
    Ok(())
}
