//! The recipes in memory, backed by the store. Reads take a snapshot
//! (`Arc<RecipeState>`); every change builds a new state, persists it, and
//! swaps it in, so an inspection always sees one whole recipe revision.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{Mutex, oneshot};

use crate::engine::{Judge, RecipeSettings};
use crate::imaging::{DecodeLimits, OwnedFrame};
use crate::store::{self, RecipeRecord, Store, StoreError};

use super::Error;
use super::worker::{Job, Worker};

/// One recipe revision.
#[derive(Debug)]
pub struct RecipeState {
    /// What is persisted.
    pub record: RecipeRecord,
    /// Ready to judge frames; `None` until good frames were added.
    pub judge: Option<Arc<Judge>>,
}

impl RecipeState {
    /// The threshold in force; 0 until the recipe has a reference.
    pub fn threshold(&self) -> f32 {
        self.judge.as_ref().map_or(0.0, |judge| judge.threshold())
    }
}

/// A recipe that could not be loaded at start-up: its folder name and why.
pub type Damaged = (String, String);

/// The recipe registry.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    limits: DecodeLimits,
    size_multiple: u32,
    recipes: RwLock<BTreeMap<String, Arc<RecipeState>>>,
    /// Serialises changes, so two calls never rebuild one recipe at once.
    writes: Mutex<()>,
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("storage task failed: {error}")))?
        .map_err(Error::from)
}

impl Registry {
    /// Loads every recipe from `store`. Recipes that cannot be used (damaged
    /// files, a reference from another model) are logged, skipped and
    /// returned with the reason.
    pub fn load(
        store: Store,
        limits: DecodeLimits,
        size_multiple: u32,
        model_id: &str,
    ) -> Result<(Self, Vec<Damaged>), StoreError> {
        let (stored, unreadable) = store.load_all()?;
        let mut damaged = Vec::new();
        for (name, error) in unreadable {
            tracing::error!(recipe = %name, %error, "skipping a damaged recipe");
            damaged.push((name, error.to_string()));
        }
        let mut recipes = BTreeMap::new();
        for recipe in stored {
            let name = recipe.record.name.clone();
            let judge = match recipe.reference {
                Some(reference) if reference.model_id != model_id => {
                    let reason = "its reference was built by another model; send its good frames again";
                    tracing::error!(recipe = %name, "skipping a recipe: {reason}");
                    damaged.push((name, reason.to_owned()));
                    continue;
                }
                Some(reference) => match Judge::new(recipe.record.settings.clone(), reference, limits) {
                    Ok(judge) => Some(Arc::new(judge)),
                    Err(error) => {
                        tracing::error!(recipe = %name, %error, "skipping a recipe that cannot be used");
                        damaged.push((name, error.to_string()));
                        continue;
                    }
                },
                None => None,
            };
            tracing::info!(recipe = %name, revision = recipe.record.revision, "recipe loaded");
            recipes.insert(
                name,
                Arc::new(RecipeState {
                    record: recipe.record,
                    judge,
                }),
            );
        }
        let registry = Self {
            store,
            limits,
            size_multiple,
            recipes: RwLock::new(recipes),
            writes: Mutex::new(()),
        };
        Ok((registry, damaged))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<RecipeState>>> {
        self.recipes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, state: RecipeState) -> Arc<RecipeState> {
        let state = Arc::new(state);
        self.recipes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(state.record.name.clone(), state.clone());
        state
    }

    /// The current revision of a recipe.
    pub fn get(&self, name: &str) -> Result<Arc<RecipeState>, Error> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no recipe named {name:?}")))
    }

    /// Every recipe, by name.
    pub fn list(&self) -> Vec<Arc<RecipeState>> {
        self.read().values().cloned().collect()
    }

    fn validate(&self, settings: &RecipeSettings) -> Result<(), Error> {
        settings
            .validate(self.size_multiple)
            .map_err(|error| Error::InvalidArgument(error.to_string()))?;
        // The mask is decoded now so a bad PNG is refused at once.
        crate::engine::settings::mask_plane(&settings.mask_png, 16, 16, self.limits)
            .map_err(|error| Error::InvalidArgument(error.to_string()))?;
        Ok(())
    }

    /// Creates a recipe without a reference.
    pub async fn create(&self, name: String, settings: RecipeSettings) -> Result<Arc<RecipeState>, Error> {
        store::validate_name(&name).map_err(Error::InvalidArgument)?;
        self.validate(&settings)?;
        let _write = self.writes.lock().await;
        if self.read().contains_key(&name) {
            return Err(Error::AlreadyExists(format!("a recipe named {name:?} exists")));
        }
        let record = RecipeRecord::new(name, settings);
        let store = self.store.clone();
        let saved = record.clone();
        blocking(move || store.save_record(&saved)).await?;
        Ok(self.publish(RecipeState { record, judge: None }))
    }

    /// Replaces a recipe's settings; rebuilds the reference from the stored
    /// good frames when the new settings change what it holds (the flag says
    /// whether it did).
    pub async fn update(
        &self,
        name: &str,
        settings: RecipeSettings,
        worker: &Worker,
    ) -> Result<(Arc<RecipeState>, bool), Error> {
        self.validate(&settings)?;
        let _write = self.writes.lock().await;
        let current = self.get(name)?;
        let mut record = current.record.clone();
        let rebuild = record.frame_count > 0 && record.settings.reference_changes(&settings);
        record.settings = settings.clone();
        record.touch();
        let judge = if rebuild {
            let frames = self.read_frames(&record).await?;
            let reference = enroll(worker, settings.clone(), frames).await?;
            let store = self.store.clone();
            let (name, revision) = (record.name.clone(), record.revision);
            let saved = reference.clone();
            record.reference_file =
                Some(blocking(move || store.save_reference(&name, revision, &saved)).await?);
            Some(Arc::new(Judge::new(settings, reference, self.limits)?))
        } else {
            match &current.judge {
                Some(judge) => Some(Arc::new(Judge::new(
                    settings,
                    judge.reference().clone(),
                    self.limits,
                )?)),
                None => None,
            }
        };
        Ok((self.commit(record, judge).await?, rebuild))
    }

    /// Adds good frames (or replaces them all) and rebuilds the reference
    /// and threshold once, from every stored frame.
    pub async fn add_references(
        &self,
        name: &str,
        frames: Vec<OwnedFrame>,
        replace: bool,
        worker: &Worker,
    ) -> Result<Arc<RecipeState>, Error> {
        let _write = self.writes.lock().await;
        let current = self.get(name)?;
        let mut record = current.record.clone();
        if frames.is_empty() && (replace || record.frame_count == 0) {
            return Err(Error::InvalidArgument("the call carried no good frame".into()));
        }
        let mut all = if replace {
            Vec::new()
        } else {
            self.read_frames(&record).await?
        };
        let old_end = record.frames().end;
        let frames_added = frames.len() as u32;
        all.extend(frames.iter().cloned());
        let reference = enroll(worker, record.settings.clone(), all).await?;

        record.touch();
        let store = self.store.clone();
        let (recipe, revision) = (record.name.clone(), record.revision);
        let saved = reference.clone();
        let file = blocking(move || {
            for (offset, frame) in frames.iter().enumerate() {
                store.save_frame(&recipe, old_end + offset as u32, frame)?;
            }
            store.save_reference(&recipe, revision, &saved)
        })
        .await?;
        if replace {
            record.first_frame = old_end;
            record.frame_count = 0;
        }
        record.frame_count += frames_added;
        record.reference_count = reference.image_count;
        record.reference_file = Some(file);
        let judge = Judge::new(record.settings.clone(), reference, self.limits)?;
        self.commit(record, Some(Arc::new(judge))).await
    }

    /// Saves the record (the commit point), prunes what it no longer uses,
    /// and publishes the new state.
    async fn commit(
        &self,
        record: RecipeRecord,
        judge: Option<Arc<Judge>>,
    ) -> Result<Arc<RecipeState>, Error> {
        let store = self.store.clone();
        let saved = record.clone();
        blocking(move || {
            store.save_record(&saved)?;
            store.prune(&saved)
        })
        .await?;
        Ok(self.publish(RecipeState { record, judge }))
    }

    async fn read_frames(&self, record: &RecipeRecord) -> Result<Vec<OwnedFrame>, Error> {
        let store = self.store.clone();
        let (name, range) = (record.name.clone(), record.frames());
        blocking(move || {
            range
                .map(|i| store.read_frame(&name, i))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
    }

    /// Deletes a recipe.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let _write = self.writes.lock().await;
        self.get(name)?;
        let store = self.store.clone();
        let folder = name.to_owned();
        blocking(move || store.delete(&folder)).await?;
        self.recipes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        Ok(())
    }
}

/// Runs an enrollment on the engine thread.
async fn enroll(
    worker: &Worker,
    settings: RecipeSettings,
    frames: Vec<OwnedFrame>,
) -> Result<crate::reference::Reference, Error> {
    let (reply, answer) = oneshot::channel();
    worker.submit(Job::Enroll {
        settings,
        frames,
        reply,
    })?;
    answer
        .await
        .map_err(|_| Error::Unavailable("the engine stopped".into()))?
        .map_err(Error::from)
}
