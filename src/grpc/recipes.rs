//! `loupe.v1.Recipes`: create, change, enroll, read and delete recipes.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::imaging::OwnedFrame;
use crate::proto;
use crate::proto::convert::{frame_from_proto, recipe_state_to_proto, settings_from_proto};
use crate::proto::recipes_server::Recipes;
use crate::server::Server;

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

    /// Reads an AddReferences stream: the recipe from the first message
    /// (later ones may repeat it), `replace` from the first, frames from any.
    async fn collect(
        &self,
        mut stream: Streaming<proto::AddReferencesRequest>,
    ) -> Result<(String, bool, Vec<OwnedFrame>), Status> {
        let status =
            |status: Status| Status::invalid_argument(format!("reading the stream: {}", status.message()));
        let Some(first) = stream.message().await.map_err(status)? else {
            return Err(Status::invalid_argument("the stream carried no message"));
        };
        if first.recipe.is_empty() {
            return Err(Status::invalid_argument("the first message must name the recipe"));
        }
        self.server.recipe(&first.recipe)?;
        let (recipe, replace) = (first.recipe, first.replace);
        let max = self.server.max_references();
        let mut frames = Vec::new();
        let mut next = Some(proto::AddReferencesRequest {
            recipe: String::new(),
            frame: first.frame,
            replace: false,
        });
        while let Some(message) = next {
            if !message.recipe.is_empty() && message.recipe != recipe {
                return Err(Status::invalid_argument(format!(
                    "message {} names recipe {:?}, the stream is for {recipe:?}",
                    frames.len() + 1,
                    message.recipe
                )));
            }
            if message.frame.is_some() {
                if frames.len() == max {
                    return Err(Status::invalid_argument(format!(
                        "more than {max} good frames in one call; send them in several calls or raise --max-references"
                    )));
                }
                frames.push(frame_from_proto(message.frame)?);
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
        Ok(Response::new(recipe_state_to_proto(&state)))
    }

    async fn update_recipe(
        &self,
        request: Request<proto::UpdateRecipeRequest>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let settings = settings_from_proto(request.settings)?;
        let (state, _rebuilt) = self.server.update_recipe(&request.name, settings, peer).await?;
        Ok(Response::new(recipe_state_to_proto(&state)))
    }

    async fn add_references(
        &self,
        request: Request<Streaming<proto::AddReferencesRequest>>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let peer = request.remote_addr();
        let (recipe, replace, frames) = self.collect(request.into_inner()).await?;
        let state = self.server.add_references(&recipe, frames, replace, peer).await?;
        Ok(Response::new(recipe_state_to_proto(&state)))
    }

    async fn get_recipe(
        &self,
        request: Request<proto::GetRecipeRequest>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let state = self.server.recipe(&request.into_inner().name)?;
        Ok(Response::new(recipe_state_to_proto(&state)))
    }

    async fn list_recipes(
        &self,
        _request: Request<proto::ListRecipesRequest>,
    ) -> Result<Response<proto::ListRecipesResponse>, Status> {
        let recipes = self
            .server
            .recipes()
            .iter()
            .map(|state| recipe_state_to_proto(state))
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
