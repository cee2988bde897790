//! `loupe.v1.Recipes`: create, change, enroll, read and delete recipes.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::config::Limits;
use crate::proto;
use crate::proto::recipes_server::Recipes;

use super::ServiceError;
use super::convert::settings_from_proto;
use super::frames::OwnedFrame;
use super::registry::Registry;
use super::worker::Worker;

/// The gRPC face of the [`Registry`].
#[derive(Debug, Clone)]
pub struct RecipesService {
    registry: Arc<Registry>,
    worker: Worker,
    max_references: usize,
}

impl RecipesService {
    /// Serves `registry`; enrollment runs on `worker`.
    pub fn new(registry: Arc<Registry>, worker: Worker, limits: &Limits) -> Self {
        Self {
            registry,
            worker,
            max_references: limits.max_references,
        }
    }

    /// Reads an AddReferences stream: the recipe from the first message
    /// (later ones may repeat it), `replace` from the first, frames from any.
    async fn collect(
        &self,
        mut stream: Streaming<proto::AddReferencesRequest>,
    ) -> Result<(String, bool, Vec<OwnedFrame>), ServiceError> {
        let status = |status: Status| {
            ServiceError::InvalidArgument(format!("reading the stream: {}", status.message()))
        };
        let Some(first) = stream.message().await.map_err(status)? else {
            return Err(ServiceError::InvalidArgument(
                "the stream carried no message".into(),
            ));
        };
        if first.recipe.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "the first message must name the recipe".into(),
            ));
        }
        self.registry.get(&first.recipe)?;
        let (recipe, replace) = (first.recipe, first.replace);
        let mut frames = Vec::new();
        let mut next = Some(proto::AddReferencesRequest {
            recipe: String::new(),
            frame: first.frame,
            replace: false,
        });
        while let Some(message) = next {
            if !message.recipe.is_empty() && message.recipe != recipe {
                return Err(ServiceError::InvalidArgument(format!(
                    "message {} names recipe {:?}, the stream is for {recipe:?}",
                    frames.len() + 1,
                    message.recipe
                )));
            }
            if message.frame.is_some() {
                if frames.len() == self.max_references {
                    return Err(ServiceError::InvalidArgument(format!(
                        "more than {} good frames in one call; send them in several calls or raise --max-references",
                        self.max_references
                    )));
                }
                frames.push(OwnedFrame::from_proto(message.frame)?);
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
        let request = request.into_inner();
        let settings = settings_from_proto(request.settings)?;
        let state = self.registry.create(request.name, settings).await?;
        Ok(Response::new(state.to_proto()))
    }

    async fn update_recipe(
        &self,
        request: Request<proto::UpdateRecipeRequest>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let request = request.into_inner();
        let settings = settings_from_proto(request.settings)?;
        let state = self
            .registry
            .update(&request.name, settings, &self.worker)
            .await?;
        Ok(Response::new(state.to_proto()))
    }

    async fn add_references(
        &self,
        request: Request<Streaming<proto::AddReferencesRequest>>,
    ) -> Result<Response<proto::Recipe>, Status> {
        let (recipe, replace, frames) = self.collect(request.into_inner()).await?;
        let state = self
            .registry
            .add_references(&recipe, frames, replace, &self.worker)
            .await?;
        Ok(Response::new(state.to_proto()))
    }

    async fn get_recipe(
        &self,
        request: Request<proto::GetRecipeRequest>,
    ) -> Result<Response<proto::Recipe>, Status> {
        Ok(Response::new(
            self.registry.get(&request.into_inner().name)?.to_proto(),
        ))
    }

    async fn list_recipes(
        &self,
        _request: Request<proto::ListRecipesRequest>,
    ) -> Result<Response<proto::ListRecipesResponse>, Status> {
        let recipes = self
            .registry
            .list()
            .iter()
            .map(|state| state.to_proto())
            .collect();
        Ok(Response::new(proto::ListRecipesResponse { recipes }))
    }

    async fn delete_recipe(
        &self,
        request: Request<proto::DeleteRecipeRequest>,
    ) -> Result<Response<proto::DeleteRecipeResponse>, Status> {
        self.registry.delete(&request.into_inner().name).await?;
        Ok(Response::new(proto::DeleteRecipeResponse {}))
    }
}
