//! `loupe.v1.Recipes`: create, change, enroll, read, delete, export and
//! import recipes.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::proto;
use crate::proto::convert::{
    drift_to_proto, frame_from_proto, recipe_state_to_proto, settings_from_proto, settings_update_from_proto,
};
use crate::proto::recipes_server::Recipes;
use crate::server::{GoodFrame, RecipeState, Server, frame_label};
use crate::text::quoted;

/// Bytes of a recipe file per ExportRecipe chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// ExportRecipe's answer.
type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::RecipeChunk, Status>> + Send>>;

/// The gRPC face of the core's recipes.
#[derive(Debug, Clone)]
pub struct RecipesService {
    server: Arc<Server>,
}

impl RecipesService {
    /// Serves the core's recipes.
    pub fn new(server: Arc<Server>) -> Self {
        Self { server }
    }

    /// The proto form of `state`, with its drift status.
    fn recipe(&self, state: &RecipeState) -> proto::Recipe {
        proto::Recipe {
            drift: self.server.drift(state).as_ref().map(drift_to_proto),
            ..recipe_state_to_proto(state)
        }
    }

    /// Reads an AddReferences stream: the recipe from the first message
    /// (later ones may repeat it), `replace` from the first, frames from any.
    /// Each frame is checked as it arrives (the call's caps, its header), so
    /// a bad one stops the call before the rest is held.
    async fn collect(
        &self,
        mut stream: Streaming<proto::AddReferencesRequest>,
    ) -> Result<(String, bool, Vec<GoodFrame>), Status> {
        let status =
            |status: Status| Status::invalid_argument(format!("reading the stream: {}", status.message()));
        let Some(first) = stream.message().await.map_err(status)? else {
            return Err(Status::invalid_argument("the stream carried no message"));
        };
        if first.recipe.is_empty() {
            return Err(Status::invalid_argument("the first message must name the recipe"));
        }
        self.server.recipe(&first.recipe)?.usable()?;
        let (recipe, replace) = (first.recipe.clone(), first.replace);
        let limits = self.server.reference_limits();
        let (mut frames, mut bytes) = (Vec::new(), 0u64);
        let mut next = Some(first);
        while let Some(message) = next {
            if !message.recipe.is_empty() && message.recipe != recipe {
                return Err(Status::invalid_argument(format!(
                    "message {} names recipe {}, the stream is for {}",
                    frames.len() + 1,
                    quoted(&message.recipe),
                    quoted(&recipe)
                )));
            }
            if message.frame.is_some() {
                let index = frames.len();
                let label = || frame_label(index, &message.name);
                if index == limits.call_frames {
                    return Err(Status::invalid_argument(format!(
                        "{}: more than {} good frames in one call; send them in several calls or raise --max-references",
                        label(),
                        limits.call_frames
                    )));
                }
                let frame = frame_from_proto(message.frame).map_err(|error| {
                    let mut status = Status::invalid_argument(format!("{}: {}", label(), error.0));
                    super::status::mark_frame(&mut status, index);
                    status
                })?;
                bytes += frame.len() as u64;
                if bytes > limits.call_bytes {
                    return Err(Status::invalid_argument(format!(
                        "{}: the call's frames pass {} bytes; send them in several calls or raise --max-reference-bytes",
                        label(),
                        limits.call_bytes
                    )));
                }
                let good = GoodFrame {
                    frame,
                    name: message.name,
                };
                self.server.check_good_frame(index, &good).await?;
                frames.push(good);
            }
            next = stream.message().await.map_err(status)?;
        }
        Ok((recipe, replace, frames))
    }

    /// Reads an ImportRecipe stream: the size and the name from the first
    /// chunk, the size checked against the server's limit before anything
    /// is held, then the chunks into a buffer that never grows past that
    /// size. A stream longer or shorter than it said is refused.
    async fn receive_file(
        &self,
        mut stream: Streaming<proto::RecipeChunk>,
    ) -> Result<(Bytes, Option<String>), Status> {
        let status =
            |status: Status| Status::invalid_argument(format!("reading the stream: {}", status.message()));
        let Some(first) = stream.message().await.map_err(status)? else {
            return Err(Status::invalid_argument("the stream carried no chunk"));
        };
        let total = first.total_size;
        if total == 0 {
            return Err(Status::invalid_argument(
                "the first chunk must give total_size, the recipe file's size in bytes",
            ));
        }
        let limit = self.server.reference_limits().max_import_bytes();
        if total > limit {
            return Err(Status::resource_exhausted(format!(
                "the recipe file has {total} bytes; this server imports at most {limit} (from --max-reference-bytes, --max-recipe-bytes, --max-enrollment-bytes)"
            )));
        }
        let total = usize::try_from(total)
            .map_err(|_| Status::resource_exhausted("the recipe file does not fit this machine's memory"))?;
        let rename = Some(first.name.clone()).filter(|name| !name.is_empty());
        let mut file: Vec<u8> = Vec::with_capacity(total.min(CHUNK_BYTES * 4));
        let mut next = Some(first);
        while let Some(chunk) = next {
            let after = file.len() + chunk.data.len();
            if after > total {
                return Err(Status::invalid_argument(format!(
                    "the stream carries more than the {total} bytes its first chunk announced"
                )));
            }
            if after > file.capacity() {
                // Doubling as Vec would, but never past the announced size.
                let want = after.max(file.capacity().saturating_mul(2)).min(total);
                file.reserve_exact(want - file.len());
            }
            if file.is_empty() && !chunk.data.is_empty() {
                // Refuse another kind of file at its first bytes, not at its end.
                let start = &chunk.data[..chunk.data.len().min(crate::store::bundle::HEADER)];
                if !start.starts_with(crate::store::bundle::MAGIC)
                    && !crate::store::bundle::MAGIC.starts_with(start)
                {
                    return Err(Status::invalid_argument(
                        crate::store::bundle::BundleError::NotARecipeFile.to_string(),
                    ));
                }
            }
            file.extend_from_slice(&chunk.data);
            next = stream.message().await.map_err(status)?;
        }
        if file.len() < total {
            return Err(Status::invalid_argument(format!(
                "the recipe file is truncated: the stream ended after {} of the {total} bytes its first chunk announced",
                file.len()
            )));
        }
        Ok((Bytes::from(file), rename))
    }
}

/// A recipe file as ExportRecipe's chunks: the first names the recipe and
/// gives the size.
fn chunks(name: String, file: Bytes) -> impl Iterator<Item = proto::RecipeChunk> {
    let total = file.len();
    (0..total.div_ceil(CHUNK_BYTES).max(1)).map(move |index| {
        let start = index * CHUNK_BYTES;
        let first = index == 0;
        proto::RecipeChunk {
            data: file.slice(start..(start + CHUNK_BYTES).min(total)),
            name: if first { name.clone() } else { String::new() },
            total_size: if first { total as u64 } else { 0 },
        }
    })
}

#[tonic::async_trait]
impl Recipes for RecipesService {
    type ExportRecipeStream = ChunkStream;

    async fn export_recipe(
        &self,
        request: Request<proto::ExportRecipeRequest>,
    ) -> Result<Response<Self::ExportRecipeStream>, Status> {
        let name = request.into_inner().name;
        // An export holds its file until the client has read it: it takes
        // one of the turns AddReferences and ImportRecipe share, so the
        // files held at once stay few.
        let turn = self.server.admit_references().await;
        let file = Bytes::from(self.server.export_recipe(&name).await?);
        let stream = tokio_stream::iter(chunks(name, file)).map(move |chunk| {
            let _held = &turn;
            Ok(chunk)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn import_recipe(
        &self,
        request: Request<Streaming<proto::RecipeChunk>>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let peer = request.remote_addr();
        let _turn = self.server.admit_references().await;
        let (file, rename) = self.receive_file(request.into_inner()).await?;
        let state = self.server.import_recipe(file, rename, peer).await?;
        Ok(Response::new(recipe_state_to_proto(&state)))
    }

    async fn create_recipe(
        &self,
        request: Request<proto::CreateRecipeRequest>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let settings = settings_from_proto(request.settings)?;
        let state = self.server.create_recipe(request.name, settings, peer).await?;
        Ok(Response::new(self.recipe(&state)))
    }

    async fn update_recipe(
        &self,
        request: Request<proto::UpdateRecipeRequest>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let update = settings_update_from_proto(request.settings, request.update_mask)?;
        let (state, rebuilt) = self.server.update_recipe(&request.name, update, peer).await?;
        Ok(Response::new(proto::Recipe {
            reference_rebuilt: rebuilt,
            ..self.recipe(&state)
        }))
    }

    async fn add_references(
        &self,
        request: Request<Streaming<proto::AddReferencesRequest>>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let peer = request.remote_addr();
        let _turn = self.server.admit_references().await;
        let (recipe, replace, frames) = self.collect(request.into_inner()).await?;
        let state = self.server.add_references(&recipe, frames, replace, peer).await?;
        Ok(Response::new(self.recipe(&state)))
    }

    async fn get_recipe(
        &self,
        request: Request<proto::GetRecipeRequest>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let state = self.server.recipe(&request.into_inner().name)?;
        Ok(Response::new(self.recipe(&state)))
    }

    async fn list_recipes(
        &self,
        request: Request<proto::ListRecipesRequest>,
    ) -> Result<Response<proto::ListRecipesResponse>, Status> {
        let view = request.into_inner().view;
        let full = match proto::RecipeView::try_from(view) {
            Ok(proto::RecipeView::Unspecified | proto::RecipeView::Basic) => false,
            Ok(proto::RecipeView::Full) => true,
            Err(_) => return Err(Status::invalid_argument(format!("unknown recipe view {view}"))),
        };
        let recipes = self
            .server
            .recipes()
            .iter()
            .map(|state| {
                let mut recipe = self.recipe(state);
                if let (false, Some(settings)) = (full, &mut recipe.settings) {
                    settings.mask_png = Default::default();
                }
                recipe
            })
            .collect();
        Ok(Response::new(proto::ListRecipesResponse { recipes }))
    }

    async fn delete_recipe(
        &self,
        request: Request<proto::DeleteRecipeRequest>,
    ) -> Result<Response<proto::DeleteRecipeResponse>, Status> {
        let peer = request.remote_addr();
        self.server
            .delete_recipe(&request.into_inner().name, peer)
            .await?;
        Ok(Response::new(proto::DeleteRecipeResponse {}))
    }
}
