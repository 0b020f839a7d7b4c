//! Models as SQL functions: `train_model` fits one on a training dataset and registers it,
//! `predict` scores rows with it, DROP MODEL removes versions. The algorithms are smartcore's.
//!
//! A model version's artifact (the fitted model as JSON) is written under the offline store's
//! location before the catalog entry that names it, and deleted after the entry is dropped, so
//! the catalog never names a missing artifact.

mod algorithm;
mod logistic;
mod metrics;
mod predict;
mod serve;
mod train;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quiver_catalog::{Applied, CatalogCommand, Model, Oid};

use crate::Engine;
use crate::ddl::oids_to_drop;
use crate::error::{SqlError, SqlResult};
use crate::session::{CommandTag, Session};

pub(crate) use algorithm::Fitted;
pub(crate) use metrics::metrics_json;
pub(crate) use predict::{PredictFunction, rewrite_predict_calls};
pub(crate) use serve::{
    LogPredictions, PredictionLog, ensure_logs, rewrite_serve_calls, served_models, with_logging,
};
pub(crate) use train::TrainModelFunction;

/// Where a model version's artifact lives, under the offline store's location. The run id makes
/// two runs that raced for the same version write different objects.
fn artifact_path(project: &str, model: &str, version: u32, run_id: &str) -> String {
    format!("models/{project}/{model}/{version}-{run_id}.json")
}

/// A fresh experiment run id: 32 hex digits.
fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

/// Fitted models by OID, loaded from their artifacts once and shared by every session.
#[derive(Debug, Default)]
pub(crate) struct ModelCache(Mutex<HashMap<Oid, Arc<Fitted>>>);

impl ModelCache {
    /// The fitted model of a catalog entry, read from its artifact if not yet loaded.
    pub(crate) async fn load(&self, engine: &Engine, model: &Model) -> SqlResult<Arc<Fitted>> {
        if let Some(fitted) = self.get(model.oid) {
            return Ok(fitted);
        }
        let bytes = quiver_storage::read_object(
            engine.offline.location(),
            &artifact_path(&model.project, &model.name, model.version, &model.run_id),
        )
        .await?;
        // A forest's artifact is megabytes of JSON: parsed off the async runtime.
        let fitted: Fitted = tokio::task::spawn_blocking(move || serde_json::from_slice(&bytes))
            .await
            .map_err(|e| SqlError::Internal(format!("loading a model failed: {e}")))?
            .map_err(|e| {
                SqlError::Internal(format!(
                    "the artifact of model \"{}\" version {}: {e}",
                    model.name, model.version
                ))
            })?;
        let fitted = Arc::new(fitted);
        self.insert(model.oid, fitted.clone());
        Ok(fitted)
    }

    pub(crate) fn get(&self, oid: Oid) -> Option<Arc<Fitted>> {
        self.0.lock().ok()?.get(&oid).cloned()
    }

    pub(crate) fn insert(&self, oid: Oid, fitted: Arc<Fitted>) {
        if let Ok(mut models) = self.0.lock() {
            models.insert(oid, fitted);
        }
    }

    fn remove(&self, oid: Oid) {
        if let Ok(mut models) = self.0.lock() {
            models.remove(&oid);
        }
    }
}

/// `DROP MODEL name [VERSION n]`: the catalog entries, then the artifacts.
pub async fn drop(
    session: &Session,
    name: &str,
    version: Option<u32>,
    if_exists: bool,
) -> SqlResult<CommandTag> {
    let tag = CommandTag::new("DROP MODEL");
    let engine = session.engine();
    let snapshot = engine.catalog.snapshot();
    let project = session.project();
    let oids = oids_to_drop(
        "model",
        name,
        version.map(|v| snapshot.model(project, name, Some(v))),
        || {
            snapshot
                .model_versions(project, name)
                .map(|m| m.oid)
                .collect()
        },
        |model| model.oid,
        if_exists,
    )?;
    if oids.is_empty() {
        return Ok(tag);
    }
    if let Applied::DroppedModels(dropped) = engine
        .change_catalog(CatalogCommand::DropModels { oids })
        .await?
    {
        remove_artifacts(engine, &dropped).await?;
    }
    Ok(tag)
}

/// Forgets and deletes the artifacts of models the catalog no longer has (a dropped model or
/// project).
pub(crate) async fn remove_artifacts(engine: &Engine, dropped: &[Model]) -> SqlResult<()> {
    for model in dropped {
        engine.models.remove(model.oid);
        quiver_storage::delete_object(
            engine.offline.location(),
            &artifact_path(&model.project, &model.name, model.version, &model.run_id),
        )
        .await?;
    }
    Ok(())
}
