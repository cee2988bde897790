//! The command-line client: `loupe recipe ...`, `loupe inspect` and
//! `loupe results ...`, over the same gRPC API an integrator
//! uses, so the service can be tried without writing code.

mod results;

pub use results::results;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::{ClientConfig, InspectArgs, RecipeAction};
use crate::engine::{MatchMode, RecipeSettings};
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
    let drift = recipe.drift.as_ref().map_or(String::new(), |drift| {
        let state = proto::DriftState::try_from(drift.state).unwrap_or(proto::DriftState::Unspecified);
        format!(
            "  drift {}",
            state.as_str_name().trim_start_matches("DRIFT_STATE_")
        )
    });
    println!(
        "{}  revision {}  references {}  threshold {:.4} ({})  input {}  mode {}{drift}",
        recipe.name,
        recipe.revision,
        recipe.reference_count,
        recipe.threshold,
        settings.threshold_source(recipe.calibration.is_some()),
        settings.input_rule(),
        settings.match_mode
    );
    if recipe.status == proto::RecipeStatus::Damaged as i32 {
        println!(
            "    DAMAGED: {}; delete it with `loupe recipe delete {}` and create it again",
            recipe.status_reason, recipe.name
        );
    }
}

/// `recipe show`: every setting and the calibration basis.
fn show_recipe(recipe: &proto::Recipe) {
    print_recipe(recipe);
    let s = settings_from_proto(recipe.settings.clone()).unwrap_or_default();
    let roi = s.roi.map_or("the whole frame".into(), |r| {
        format!("{},{},{},{}", r.x, r.y, r.width, r.height)
    });
    let mask = match s.mask_png.len() {
        0 => "none".into(),
        bytes => format!("a {bytes}-byte PNG"),
    };
    let threshold = s.threshold.map_or("unset (calibrated)".into(), |t| t.to_string());
    for (name, value) in [
        ("match_mode", s.match_mode.to_string()),
        ("input size", s.input_rule().to_string()),
        ("keep_aspect", s.keep_aspect.to_string()),
        ("neighborhood", s.neighborhood.to_string()),
        ("reference_size", s.reference_size.to_string()),
        ("search", s.search.to_string()),
        ("min_region_area", min_region_area(&s)),
        ("roi", roi),
        ("mask", mask),
        ("threshold", threshold),
        ("sensitivity", s.sensitivity.to_string()),
        ("target_false_reject_rate", s.target_false_reject_rate.to_string()),
        ("drift_window", s.drift_window.to_string()),
        (
            "drift shift limits",
            format!("watch {}, drift {}", s.drift_watch_shift, s.drift_limit_shift),
        ),
        (
            "drift share limits",
            format!("watch {}, drift {}", s.drift_watch_share, s.drift_limit_share),
        ),
    ] {
        println!("    {name:<26}{value}");
    }
    if let Some(calibration) = &recipe.calibration {
        let expected = calibration
            .expected_false_reject_rate
            .map_or("no rate can be stated".to_owned(), |rate| {
                format!("expected false rejects at most {:.2} %", 100.0 * rate)
            });
        let in_force = match s.threshold {
            Some(fixed) => format!("not in force: the settings fix the threshold at {fixed}"),
            None => format!("in force divided by sensitivity {}", s.sensitivity),
        };
        println!(
            "    calibrated threshold {:.4} from {} good-frame scores ({}), target false rejects {:.2} %, {expected}; {in_force}",
            calibration.calibrated_threshold,
            calibration.frames_scored,
            calibration.rule,
            100.0 * calibration.target_false_reject_rate,
        );
    }
    if let Some(drift) = &recipe.drift {
        println!("    drift watch: {}", drift_line(drift));
    }
}

/// The smallest region reported, and for 0 what the mode makes of it.
fn min_region_area(s: &RecipeSettings) -> String {
    match (s.min_region_area, s.match_mode) {
        (0, MatchMode::Aligned) => "0 (the mode chooses: one feature cell, in frame pixels)".into(),
        (0, MatchMode::Global) => "0 (the mode chooses: every region)".into(),
        (area, _) => format!("{area} frame pixels"),
    }
}

/// The drift status in one line.
fn drift_line(drift: &proto::Drift) -> String {
    let state = proto::DriftState::try_from(drift.state).unwrap_or(proto::DriftState::Unspecified);
    let name = state.as_str_name().trim_start_matches("DRIFT_STATE_");
    if state == proto::DriftState::Unavailable {
        return format!("{name}: {}", drift.reason);
    }
    let statistics = match (drift.median_shift, drift.share_above_p95) {
        (Some(shift), Some(share)) => format!(
            "median shift {shift:.2}, {:.1} % above the calibration p95 {:.4}",
            100.0 * share,
            drift.calibration_p95
        ),
        _ => "no PASS part seen yet".to_owned(),
    };
    let judged = if drift.window_parts < drift.min_parts {
        format!(" (OK until {} parts are seen)", drift.min_parts)
    } else {
        String::new()
    };
    format!(
        "{name}{judged}: {statistics} over the last {} PASS parts ({} seen since the reference)",
        drift.window_parts, drift.parts_seen
    )
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
                show_recipe(&recipe);
            }
        }
        RecipeAction::Delete { name } => {
            client
                .delete_recipe(proto::DeleteRecipeRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("deleted {name}");
        }
        RecipeAction::AddRefs {
            name,
            files,
            replace,
            skip_bad,
        } => {
            let mut frames = Vec::with_capacity(files.len());
            for file in files {
                match read_frame(&file) {
                    Ok(frame) => frames.push((file, frame)),
                    Err(error) if skip_bad => eprintln!("skipped {}: {error:#}", file.display()),
                    Err(error) => return Err(error),
                }
            }
            let recipe = add_references(&mut client, &name, frames, replace, skip_bad).await?;
            print_recipe(&recipe);
        }
        RecipeAction::Export { name, file } => {
            let bytes = export_recipe(&mut client, &name).await?;
            crate::store::atomic::write(&file, &bytes)
                .with_context(|| format!("writing {}", file.display()))?;
            println!("exported {name} to {} ({} bytes)", file.display(), bytes.len());
        }
        RecipeAction::Import { file, rename } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let total_size = bytes.len() as u64;
            let bytes = bytes::Bytes::from(bytes);
            let pieces = bytes.len().div_ceil(EXPORT_CHUNK).max(1);
            let name = rename.unwrap_or_default();
            let chunks = (0..pieces).map(move |index| {
                let start = index * EXPORT_CHUNK;
                proto::RecipeChunk {
                    data: bytes.slice(start..(start + EXPORT_CHUNK).min(bytes.len())),
                    name: if index == 0 { name.clone() } else { String::new() },
                    total_size: if index == 0 { total_size } else { 0 },
                }
            });
            let recipe = client
                .import_recipe(tokio_stream::iter(chunks))
                .await
                .map_err(status)?
                .into_inner();
            print_recipe(&recipe);
        }
    }
    Ok(())
}

/// Chunk size of a recipe file sent to ImportRecipe.
const EXPORT_CHUNK: usize = 1 << 20;

/// Receives a recipe file from ExportRecipe, checking the size the first
/// chunk announces.
async fn export_recipe(client: &mut RecipesClient<client::Connection>, name: &str) -> Result<Vec<u8>> {
    let mut stream = client
        .export_recipe(proto::ExportRecipeRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut file = Vec::new();
    let mut total = None;
    while let Some(chunk) = stream.message().await.map_err(status)? {
        let total = *total.get_or_insert(chunk.total_size);
        if file.len() as u64 + chunk.data.len() as u64 > total {
            bail!("the server sent more than the {total} bytes it announced");
        }
        file.extend_from_slice(&chunk.data);
    }
    match total {
        Some(total) if file.len() as u64 == total => Ok(file),
        Some(total) => bail!(
            "the export ended after {} of {total} bytes; try again",
            file.len()
        ),
        None => bail!("the server sent no recipe file"),
    }
}

/// Sends `frames` in one AddReferences call; with `skip_bad`, a frame the
/// server refuses (named by [`crate::grpc::FRAME_INDEX_METADATA`]) is left out
/// and the others are sent again.
async fn add_references(
    client: &mut RecipesClient<client::Connection>,
    name: &str,
    mut frames: Vec<(PathBuf, proto::Frame)>,
    replace: bool,
    skip_bad: bool,
) -> Result<proto::Recipe> {
    loop {
        if frames.is_empty() {
            bail!("no good frame left to send");
        }
        let messages: Vec<proto::AddReferencesRequest> = frames
            .iter()
            .enumerate()
            .map(|(index, (file, frame))| proto::AddReferencesRequest {
                recipe: if index == 0 {
                    name.to_owned()
                } else {
                    String::new()
                },
                frame: Some(frame.clone()),
                replace: index == 0 && replace,
                name: file.display().to_string(),
            })
            .collect();
        let error = match client.add_references(tokio_stream::iter(messages)).await {
            Ok(recipe) => return Ok(recipe.into_inner()),
            Err(error) => error,
        };
        let bad = error
            .metadata()
            .get(crate::grpc::FRAME_INDEX_METADATA)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok())
            .filter(|&index| index < frames.len());
        match bad {
            Some(index) if skip_bad => {
                let (file, _) = frames.remove(index);
                eprintln!("skipped {}: {}", file.display(), error.message());
            }
            _ => return Err(status(error)),
        }
    }
}

fn read_frame(file: &Path) -> Result<proto::Frame> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(encoded_frame(bytes))
}

/// How `loupe inspect` went, which decides its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InspectOutcome {
    /// Every part passed (exit 0).
    AllPassed,
    /// At least one part failed (exit 1).
    SomeFailed,
    /// At least one file could not be inspected (exit 2).
    Errors,
}

/// Runs `loupe inspect` on the server `server` resolves to: every file,
/// even after one that could not be inspected.
pub async fn inspect(server: &ClientConfig, args: InspectArgs) -> Result<InspectOutcome> {
    let mut client = InspectionClient::new(client::connect(server).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut heatmaps = args.heatmap.as_deref().map(HeatmapNames::new);
    let (mut failed, mut errors) = (0, 0);
    for file in &args.files {
        let heatmap = args.heatmap.as_ref().map(|_| proto::HeatmapOptions {
            format: proto::HeatmapFormat::OverlayPng as i32,
            max_size: 0,
            outline_regions: !args.plain_heatmap,
            stamp_verdict: !args.plain_heatmap,
        });
        let answer = match read_frame(file) {
            Ok(frame) => {
                let request = proto::InspectRequest {
                    recipe: args.recipe.clone(),
                    frame: Some(frame),
                    frame_id: file.display().to_string(),
                    heatmap,
                };
                client
                    .inspect(request)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(status)
            }
            Err(error) => Err(error),
        };
        let response = match answer {
            Ok(response) => response,
            Err(error) => {
                errors += 1;
                if args.json {
                    let line = serde_json::json!({ "file": file.display().to_string(), "error": format!("{error:#}") });
                    println!("{line}");
                } else {
                    println!("{}: ERROR {error:#}", file.display());
                }
                continue;
            }
        };
        let fail = response.verdict == proto::Verdict::Fail as i32;
        failed += usize::from(fail);
        let overlay = match (&mut heatmaps, &response.heatmap) {
            (Some(names), Some(heatmap)) => Some(names.write(file, &heatmap.data)?),
            _ => None,
        };
        if args.json {
            println!("{}", verdict_json(file, &response, overlay.as_deref()));
        } else {
            print_verdict(file, &response, fail);
        }
    }
    Ok(match (errors, failed) {
        (0, 0) => InspectOutcome::AllPassed,
        (0, _) => InspectOutcome::SomeFailed,
        _ => InspectOutcome::Errors,
    })
}

fn print_verdict(file: &Path, response: &proto::InspectResponse, fail: bool) {
    let total_ms = response
        .timings
        .as_ref()
        .map_or(0.0, |t| t.total_us as f64 / 1000.0);
    println!(
        "{}: {} score {:.4} ({:.2} x threshold {:.4}) {} region(s) {total_ms:.1} ms",
        file.display(),
        if fail { "FAIL" } else { "PASS" },
        response.score,
        response.normalized_score,
        response.threshold,
        response.regions.len()
    );
    for region in &response.regions {
        println!(
            "    region x {} y {} {}x{} area {} max {:.4} mean {:.4}",
            region.x, region.y, region.width, region.height, region.area, region.max_score, region.mean_score
        );
    }
}

/// One line of `--json`: the API's fields of the answer, by their proto
/// names.
fn verdict_json(file: &Path, response: &proto::InspectResponse, overlay: Option<&Path>) -> serde_json::Value {
    let verdict =
        proto::Verdict::try_from(response.verdict).map_or("VERDICT_UNSPECIFIED", |v| v.as_str_name());
    let regions: Vec<serde_json::Value> = response
        .regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "x": r.x, "y": r.y, "width": r.width, "height": r.height,
                "area": r.area, "max_score": r.max_score, "mean_score": r.mean_score,
            })
        })
        .collect();
    let timings = response.timings.as_ref().map(|t| {
        serde_json::json!({
            "decode_us": t.decode_us, "queue_us": t.queue_us, "preprocess_us": t.preprocess_us,
            "inference_us": t.inference_us, "postprocess_us": t.postprocess_us, "total_us": t.total_us,
        })
    });
    serde_json::json!({
        "file": file.display().to_string(),
        "frame_id": response.frame_id,
        "verdict": verdict,
        "score": response.score,
        "threshold": response.threshold,
        "normalized_score": response.normalized_score,
        "recipe_revision": response.recipe_revision,
        "regions": regions,
        "timings": timings,
        "overlay": overlay.map(|path| path.display().to_string()),
    })
}

/// Heatmap file names under `--heatmap DIR`: the input's relative path with
/// `.overlay.png` for its extension, and the extension kept where two
/// inputs would otherwise share a name (`a.png`, `a.jpg`).
#[derive(Debug)]
struct HeatmapNames {
    dir: PathBuf,
    used: std::collections::HashSet<PathBuf>,
}

impl HeatmapNames {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            used: std::collections::HashSet::new(),
        }
    }

    /// The name for `input`: unique in this run, and inside the folder
    /// whatever the input's path (`..` and roots are dropped).
    fn name(&mut self, input: &Path) -> PathBuf {
        use std::path::Component;
        let parts: PathBuf = input
            .components()
            .filter_map(|part| match part {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let stem = parts.with_extension("overlay.png");
        let name = if self.used.contains(&stem) {
            let mut whole = parts.into_os_string();
            whole.push(".overlay.png");
            PathBuf::from(whole)
        } else {
            stem
        };
        self.used.insert(name.clone());
        self.dir.join(name)
    }

    /// Writes `png` for `input`; returns where.
    fn write(&mut self, input: &Path, png: &[u8]) -> Result<PathBuf> {
        let path = self.name(input);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_names_are_unique_for_inputs_of_one_stem() {
        let mut names = HeatmapNames::new(Path::new("/out"));
        let mut name = |input: &str| names.name(Path::new(input)).display().to_string();
        assert_eq!(name("good/000.png"), "/out/good/000.overlay.png");
        assert_eq!(name("crack/000.png"), "/out/crack/000.overlay.png");
        assert_eq!(name("crack/000.jpg"), "/out/crack/000.jpg.overlay.png");
        assert_eq!(name("../parts/000.png"), "/out/parts/000.overlay.png");
        assert_eq!(name("/abs/000.png"), "/out/abs/000.overlay.png");
    }
}
