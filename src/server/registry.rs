//! The recipes in memory, backed by the store. Reads take a snapshot
//! (`Arc<RecipeState>`); every change builds a new state, persists it, and
//! swaps it in, so an inspection always sees one whole recipe revision.
//! Recipes that cannot be used (damaged files, another model's reference)
//! stay listed with the reason, until they are deleted.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{Mutex, oneshot};

use crate::engine::{Judge, RecipeSettings, Setting, SettingsUpdate};
use crate::failpoint::stop_here as failpoint;
use crate::imaging::{DecodeLimits, OwnedFrame};
use crate::store::bundle::{self, Contents};
use crate::store::{self, RecipeRecord, Store, StoreError};
use crate::text::quoted;

use super::worker::{Job, Worker};
use super::{Error, GoodFrame, ReferenceLimits};

/// One recipe revision.
#[derive(Debug)]
pub struct RecipeState {
    /// What is persisted.
    pub record: RecipeRecord,
    /// Ready to judge frames; `None` until good frames were added.
    pub judge: Option<Arc<Judge>>,
    /// Why the recipe cannot be used, when it was found damaged at start-up;
    /// only deleting it helps.
    pub damage: Option<String>,
}

impl RecipeState {
    /// The threshold in force; 0 until the recipe has a reference.
    pub fn threshold(&self) -> f32 {
        self.judge.as_ref().map_or(0.0, |judge| judge.threshold())
    }

    /// Refuses a damaged recipe with its reason.
    pub fn usable(&self) -> Result<(), Error> {
        match &self.damage {
            None => Ok(()),
            Some(reason) => Err(Error::FailedPrecondition(format!(
                "recipe {} is damaged ({reason}); delete it with DeleteRecipe and create it again",
                quoted(&self.record.name)
            ))),
        }
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
    /// The served model's identity, which every reference must carry.
    model_id: String,
    recipes: RwLock<BTreeMap<String, Arc<RecipeState>>>,
    /// Serialises changes, so two calls never rebuild one recipe at once.
    writes: Mutex<()>,
}

/// Runs storage and CPU work of a change on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Internal(format!("storage task failed: {error}")))?
}

impl Registry {
    /// Loads every recipe from `store`. Recipes that cannot be used (damaged
    /// files, a reference from another model) are logged, listed as damaged,
    /// and returned with the reason.
    pub fn load(
        store: Store,
        limits: DecodeLimits,
        size_multiple: u32,
        model_id: &str,
    ) -> Result<(Self, Vec<Damaged>), StoreError> {
        let (stored, unreadable) = store.load_all()?;
        let mut damaged = Vec::new();
        let mut recipes = BTreeMap::new();
        let mut mark_damaged = |record: RecipeRecord, reason: String| {
            tracing::error!(recipe = %record.name, %reason, "a recipe cannot be used; it is listed as damaged");
            damaged.push((record.name.clone(), reason.clone()));
            (record, None, Some(reason))
        };
        let mut states = Vec::new();
        for (name, error) in unreadable {
            // Revision 0: nothing of it could be read.
            let mut record = RecipeRecord::new(name, RecipeSettings::default());
            record.revision = 0;
            states.push(mark_damaged(record, error.for_client()));
        }
        for recipe in stored {
            let record = recipe.record;
            states.push(match recipe.reference {
                Some(reference) if reference.model_id != model_id => mark_damaged(
                    record,
                    "its reference was built by another model; send its good frames again".to_owned(),
                ),
                Some(reference) => match Judge::new(record.settings.clone(), reference, limits) {
                    Ok(judge) => (record, Some(Arc::new(judge)), None),
                    Err(error) => mark_damaged(record, error.to_string()),
                },
                None => (record, None, None),
            });
        }
        for (record, judge, damage) in states {
            if damage.is_none() {
                tracing::info!(recipe = %record.name, revision = record.revision, "recipe loaded");
            }
            recipes.insert(
                record.name.clone(),
                Arc::new(RecipeState {
                    record,
                    judge,
                    damage,
                }),
            );
        }
        let registry = Self {
            store,
            limits,
            size_multiple,
            model_id: model_id.to_owned(),
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
            .ok_or_else(|| Error::NotFound(format!("no recipe named {}", quoted(name))))
    }

    /// Every recipe, by name.
    pub fn list(&self) -> Vec<Arc<RecipeState>> {
        self.read().values().cloned().collect()
    }

    /// Checks settings off the async runtime (the mask PNG is decoded now,
    /// so a bad one is refused at once).
    async fn validate(&self, settings: &RecipeSettings) -> Result<(), Error> {
        let (settings, size_multiple, limits) = (settings.clone(), self.size_multiple, self.limits);
        blocking(move || {
            let invalid = |error: &dyn std::fmt::Display| Error::InvalidArgument(error.to_string());
            settings.validate(size_multiple).map_err(|e| invalid(&e))?;
            crate::engine::settings::mask_plane(&settings.mask_png, 16, 16, limits)
                .map_err(|e| invalid(&e))?;
            Ok(())
        })
        .await
    }

    /// Creates a recipe without a reference.
    pub async fn create(&self, name: String, settings: RecipeSettings) -> Result<Arc<RecipeState>, Error> {
        store::validate_name(&name).map_err(Error::InvalidArgument)?;
        self.validate(&settings).await?;
        let _write = self.writes.lock().await;
        if self.read().contains_key(&name) {
            return Err(Error::AlreadyExists(format!(
                "a recipe named {} exists",
                quoted(&name)
            )));
        }
        let record = RecipeRecord::new(name, settings);
        let store = self.store.clone();
        let saved = record.clone();
        blocking(move || {
            store.save_record(&saved)?;
            failpoint("record.saved");
            Ok(())
        })
        .await?;
        Ok(self.publish(RecipeState {
            record,
            judge: None,
            damage: None,
        }))
    }

    /// Applies `update` to a recipe's settings; rebuilds the reference from
    /// the stored good frames when the new settings change what it holds.
    /// Returns the settings that changed and whether it rebuilt.
    pub async fn update(
        &self,
        name: &str,
        update: &SettingsUpdate,
        worker: &Worker,
    ) -> Result<(Arc<RecipeState>, Vec<Setting>, bool), Error> {
        // Merged under the lock, so that two updates of different settings
        // do not undo each other.
        let _write = self.writes.lock().await;
        let current = self.get(name)?;
        current.usable()?;
        let settings = update.apply(&current.record.settings);
        self.validate(&settings).await?;
        let changed = current.record.settings.changes(&settings);
        let mut record = current.record.clone();
        let rebuild = record.frame_count > 0 && record.settings.reference_changes(&settings);
        record.settings = settings.clone();
        record.touch();
        let judge = if rebuild {
            let frames = self.read_frames(&record).await?;
            let reference = enroll(worker, name, settings, frames).await?;
            let (file, judge) = self.save_reference(&record, Vec::new(), reference).await?;
            record.reference_file = Some(file);
            Some(judge)
        } else {
            match &current.judge {
                Some(judge) => {
                    let (reference, limits) = (judge.reference().clone(), self.limits);
                    Some(blocking(move || Ok(Arc::new(Judge::new(settings, reference, limits)?))).await?)
                }
                None => None,
            }
        };
        Ok((self.commit(record, judge).await?, changed, rebuild))
    }

    /// Adds good frames (or replaces them all) and rebuilds the reference
    /// and threshold once, from every stored frame.
    pub async fn add_references(
        &self,
        name: &str,
        good: Vec<GoodFrame>,
        replace: bool,
        limits: ReferenceLimits,
        worker: &Worker,
    ) -> Result<Arc<RecipeState>, Error> {
        let _write = self.writes.lock().await;
        let current = self.get(name)?;
        current.usable()?;
        let mut record = current.record.clone();
        if good.is_empty() && (replace || record.frame_count == 0) {
            return Err(Error::InvalidArgument("the call carried no good frame".into()));
        }
        let (kept_frames, kept_bytes) = if replace {
            (0, 0)
        } else {
            (u64::from(record.frame_count), record.frame_bytes)
        };
        let added_bytes: u64 = good.iter().map(|frame| frame.frame.len() as u64).sum();
        let (frames_after, bytes_after) = (kept_frames + good.len() as u64, kept_bytes + added_bytes);
        if frames_after > limits.recipe_frames || bytes_after > limits.recipe_bytes {
            return Err(Error::ResourceExhausted(format!(
                "recipe {} would hold {frames_after} good frames of {bytes_after} bytes; a recipe holds at most {} frames (--max-recipe-frames) and {} bytes (--max-recipe-bytes); send them with replace to start afresh",
                quoted(name),
                limits.recipe_frames,
                limits.recipe_bytes
            )));
        }
        let mut all = if replace {
            Vec::new()
        } else {
            self.read_frames(&record).await?
        };
        let old_end = record.frames().end;
        let frames_added = good.len() as u32;
        let stored = all.len();
        all.extend(good.iter().map(|frame| frame.frame.clone()));
        let reference = enroll(worker, &record.name, record.settings.clone(), all)
            .await
            .map_err(|error| match error {
                // Name the frame of this call the engine refused.
                Error::ReferenceFrame { index, source, .. } if index >= stored => Error::ReferenceFrame {
                    index: index - stored,
                    name: good[index - stored].name.clone(),
                    source,
                },
                other => other,
            })?;
        let frames: Vec<OwnedFrame> = good.into_iter().map(|frame| frame.frame).collect();

        record.touch();
        let image_count = reference.image_count;
        let (file, judge) = self.save_reference(&record, frames, reference).await?;
        if replace {
            record.first_frame = old_end;
            record.frame_count = 0;
        }
        record.frame_count += frames_added;
        record.frame_bytes = bytes_after;
        record.reference_count = image_count;
        record.reference_file = Some(file);
        self.commit(record, Some(judge)).await
    }

    /// Before the commit point, off the async runtime: stores the new good
    /// frames after the record's (numbered on from its last), then the
    /// reference for the record's revision, and builds its judge. Returns
    /// the reference's file name.
    async fn save_reference(
        &self,
        record: &RecipeRecord,
        frames: Vec<OwnedFrame>,
        reference: crate::reference::Reference,
    ) -> Result<(String, Arc<Judge>), Error> {
        let store = self.store.clone();
        let (recipe, revision, first) = (record.name.clone(), record.revision, record.frames().end);
        let (settings, limits) = (record.settings.clone(), self.limits);
        blocking(move || {
            for (offset, frame) in frames.iter().enumerate() {
                store.save_frame(&recipe, first + offset as u32, frame)?;
            }
            failpoint("frames.saved");
            let file = store.save_reference(&recipe, revision, &reference)?;
            failpoint("reference.saved");
            Ok((file, Arc::new(Judge::new(settings, reference, limits)?)))
        })
        .await
    }

    /// Saves the record (the commit point), prunes what it no longer uses,
    /// and publishes the new state. Once the record is saved the change
    /// holds: a failing prune is only logged (the next start retries), so
    /// memory and disk agree.
    async fn commit(
        &self,
        record: RecipeRecord,
        judge: Option<Arc<Judge>>,
    ) -> Result<Arc<RecipeState>, Error> {
        let store = self.store.clone();
        let saved = record.clone();
        blocking(move || {
            store.save_record(&saved)?;
            failpoint("record.saved");
            if let Err(error) = store.prune(&saved) {
                tracing::warn!(recipe = %saved.name, %error, "cannot remove files the new revision no longer uses");
            }
            Ok(())
        })
        .await?;
        Ok(self.publish(RecipeState {
            record,
            judge,
            damage: None,
        }))
    }

    async fn read_frames(&self, record: &RecipeRecord) -> Result<Vec<OwnedFrame>, Error> {
        let store = self.store.clone();
        let (name, range) = (record.name.clone(), record.frames());
        blocking(move || {
            range
                .map(|i| store.read_frame(&name, i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::from)
        })
        .await
    }

    /// A recipe as one recipe file ([`bundle`]): its settings, its stored
    /// good frames and its reference. The frames are read under the change
    /// lock, so they are those of the revision exported.
    pub async fn export(&self, name: &str) -> Result<Vec<u8>, Error> {
        let (current, frames) = {
            let _write = self.writes.lock().await;
            let current = self.get(name)?;
            current.usable()?;
            let frames = self.read_frames(&current.record).await?;
            (current, frames)
        };
        blocking(move || {
            let contents = Contents {
                name: current.record.name.clone(),
                settings: current.record.settings.clone(),
                frames,
                reference: current.judge.as_ref().map(|judge| judge.reference().clone()),
            };
            bundle::encode(&contents).map_err(|error| {
                Error::Internal(format!(
                    "cannot export recipe {}: {error}",
                    quoted(&contents.name)
                ))
            })
        })
        .await
    }

    /// Creates a recipe from a recipe file, under `rename` or the name in
    /// the file. Everything is checked before anything is written: the
    /// file's checksum and sections, the name (free, else AlreadyExists),
    /// the settings, the good frames against `limits` and the frame
    /// limits, and the reference against the served model (one built by
    /// another model is refused with FailedPrecondition: its features mean
    /// nothing to this one) and against the settings. The recipe is then
    /// written whole or not at all ([`Store::import`]), at revision 1.
    pub async fn import(
        &self,
        file: bytes::Bytes,
        rename: Option<String>,
        limits: ReferenceLimits,
    ) -> Result<Arc<RecipeState>, Error> {
        if let Some(name) = &rename {
            store::validate_name(name).map_err(Error::InvalidArgument)?;
            self.refuse_taken(name)?;
        }
        let contents = blocking(move || {
            bundle::decode(&file).map_err(|error| Error::InvalidArgument(error.to_string()))
        })
        .await?;
        let name = rename.unwrap_or_else(|| contents.name.clone());
        store::validate_name(&name).map_err(|error| {
            Error::InvalidArgument(format!(
                "the recipe file names its recipe badly: {error}; import it with another name"
            ))
        })?;
        self.refuse_taken(&name)?;
        let frame_bytes: u64 = contents.frames.iter().map(|frame| frame.len() as u64).sum();
        let frame_count = contents.frames.len() as u64;
        if frame_count > limits.recipe_frames || frame_bytes > limits.recipe_bytes {
            return Err(Error::ResourceExhausted(format!(
                "the recipe file holds {frame_count} good frames of {frame_bytes} bytes; a recipe holds at most {} frames (--max-recipe-frames) and {} bytes (--max-recipe-bytes)",
                limits.recipe_frames, limits.recipe_bytes
            )));
        }
        if let Some(reference) = &contents.reference
            && reference.model_id != self.model_id
        {
            return Err(Error::FailedPrecondition(format!(
                "the recipe file's reference was built by another model ({}) than this server serves ({}); serve the same model, or create the recipe here and add its good frames",
                quoted(&reference.model_id),
                quoted(&self.model_id)
            )));
        }
        self.validate(&contents.settings).await?;
        let Contents {
            settings,
            frames,
            reference,
            ..
        } = contents;
        let (decode_limits, for_judge) = (self.limits, settings.clone());
        let (frames, reference, judge) = blocking(move || {
            for (index, frame) in frames.iter().enumerate() {
                crate::imaging::decode_cost(frame.as_data(), decode_limits).map_err(|error| {
                    Error::InvalidArgument(format!("good frame {index} of the recipe file: {error}"))
                })?;
            }
            let judge = match &reference {
                Some(reference) => Some(Arc::new(
                    Judge::new(for_judge, reference.clone(), decode_limits).map_err(|error| {
                        Error::InvalidArgument(format!(
                            "the recipe file's reference does not fit its settings: {error}"
                        ))
                    })?,
                )),
                None => None,
            };
            Ok((frames, reference, judge))
        })
        .await?;

        let mut record = RecipeRecord::new(name, settings);
        record.frame_count = frames.len() as u32;
        record.frame_bytes = frame_bytes;
        if let Some(reference) = &reference {
            record.reference_file = Some(store::reference_file_name(record.revision));
            record.reference_count = reference.image_count;
        }
        let _write = self.writes.lock().await;
        self.refuse_taken(&record.name)?;
        let (store, saved) = (self.store.clone(), record.clone());
        blocking(move || {
            store.import(&saved, &frames, reference.as_ref())?;
            failpoint("import.renamed");
            Ok(())
        })
        .await?;
        Ok(self.publish(RecipeState {
            record,
            judge,
            damage: None,
        }))
    }

    fn refuse_taken(&self, name: &str) -> Result<(), Error> {
        if self.read().contains_key(name) {
            return Err(Error::AlreadyExists(format!(
                "a recipe named {} exists; import under another name (--name) or delete it first",
                quoted(name)
            )));
        }
        Ok(())
    }

    /// Deletes a recipe.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let _write = self.writes.lock().await;
        self.get(name)?;
        let store = self.store.clone();
        let folder = name.to_owned();
        blocking(move || store.delete(&folder).map_err(Error::from)).await?;
        self.recipes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        Ok(())
    }
}

/// Runs an enrollment for `recipe` on the engine thread.
async fn enroll(
    worker: &Worker,
    recipe: &str,
    settings: RecipeSettings,
    frames: Vec<OwnedFrame>,
) -> Result<crate::reference::Reference, Error> {
    let (reply, answer) = oneshot::channel();
    worker.submit(Job::Enroll {
        recipe: recipe.to_owned(),
        settings,
        frames,
        reply,
    })?;
    answer
        .await
        .map_err(|_| Error::Unavailable("the engine stopped".into()))?
        .map_err(Error::from)
}
