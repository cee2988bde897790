//! `loupe.v1.Recipes`: create, change, enroll, read and delete recipes.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::proto;
use crate::proto::convert::{
    drift_to_proto, frame_from_proto, recipe_state_to_proto, settings_from_proto, settings_update_from_proto,
};
use crate::proto::recipes_server::Recipes;
use crate::server::{GoodFrame, RecipeState, Server, frame_label};
use crate::text::quoted;

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
}

#[tonic::async_trait]
impl Recipes for RecipesService {
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
