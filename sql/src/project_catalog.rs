//! A project as DataFusion sees it: one catalog with schema `public` (feature groups and tables,
//! resolved through the Quiver catalog at planning time), schema `online` (the online store of
//! online feature groups) and schema `quiver` (discovery tables).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::catalog::information_schema::INFORMATION_SCHEMA;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult};

use quiver_catalog::{Oid, Relation};

use crate::Engine;
use crate::discovery;
use crate::feature_view;
use crate::online::{ONLINE_SCHEMA, OnlineTable};
use crate::relation::RelationTable;
use crate::training_dataset::{DATASET_SCHEMA, DatasetSchema};

/// The schema that holds a project's feature groups and tables.
pub const PUBLIC_SCHEMA: &str = "public";
/// The schema that holds the discovery tables.
pub const DISCOVERY_SCHEMA: &str = "quiver";

/// The schema of PostgreSQL's system catalog, for psql, drivers and BI tools.
pub const SYSTEM_SCHEMA: &str = "pg_catalog";

/// The DataFusion catalog of one project, for one session.
#[derive(Debug)]
pub struct ProjectCatalog {
    engine: Arc<Engine>,
    project: String,
    /// The user whose listings these are: `quiver.projects` shows what they may see.
    viewer: String,
    /// Offline versions that reads of these relations are pinned to, by OID.
    pins: Arc<HashMap<Oid, u64>>,
    /// `pg_catalog`, registered by datafusion-pg-catalog once the session's context exists (its
    /// tables read the context's catalogs, so it cannot be built before them).
    system: OnceLock<Arc<dyn SchemaProvider>>,
    /// `information_schema`, registered with `pg_catalog` for the same reason.
    information: OnceLock<Arc<dyn SchemaProvider>>,
}

impl ProjectCatalog {
    /// A project's catalog; reads of the relations in `pins` see the pinned offline versions.
    pub fn new(
        engine: Arc<Engine>,
        project: String,
        viewer: String,
        pins: Arc<HashMap<Oid, u64>>,
    ) -> Self {
        ProjectCatalog {
            engine,
            project,
            viewer,
            pins,
            system: OnceLock::new(),
            information: OnceLock::new(),
        }
    }
}

impl CatalogProvider for ProjectCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = vec![
            PUBLIC_SCHEMA.to_string(),
            ONLINE_SCHEMA.to_string(),
            DISCOVERY_SCHEMA.to_string(),
        ];
        if self.system.get().is_some() {
            names.push(SYSTEM_SCHEMA.to_string());
        }
        if self.information.get().is_some() {
            names.push(INFORMATION_SCHEMA.to_string());
        }
        let snapshot = self.engine.catalog.snapshot();
        for (owner, _) in snapshot.shared_with(&self.project) {
            if !names.iter().any(|name| name == owner) {
                names.push(owner.to_string());
            }
        }
        names
    }

    /// Only `pg_catalog` and `information_schema` can be registered: every other schema is
    /// Quiver's own.
    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        let slot = match name {
            SYSTEM_SCHEMA => &self.system,
            INFORMATION_SCHEMA => &self.information,
            _ => {
                return Err(DataFusionError::NotImplemented(format!(
                    "schema \"{name}\" cannot be created: a project's schemas are public, online, quiver and pg_catalog"
                )));
            }
        };
        slot.set(schema).map_err(|_| {
            DataFusionError::Internal(format!("{name} is registered once per session"))
        })?;
        Ok(None)
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match name {
            SYSTEM_SCHEMA => self.system.get().cloned(),
            INFORMATION_SCHEMA => self.information.get().cloned(),
            PUBLIC_SCHEMA => Some(Arc::new(PublicSchema {
                engine: self.engine.clone(),
                project: self.project.clone(),
                pins: self.pins.clone(),
            })),
            ONLINE_SCHEMA => Some(Arc::new(OnlineSchema {
                engine: self.engine.clone(),
                project: self.project.clone(),
            })),
            DATASET_SCHEMA => Some(Arc::new(DatasetSchema {
                engine: self.engine.clone(),
                project: self.project.clone(),
            })),
            DISCOVERY_SCHEMA => Some(Arc::new(DiscoverySchema {
                engine: self.engine.clone(),
                project: self.project.clone(),
                viewer: self.viewer.clone(),
            })),
            other => {
                let snapshot = self.engine.catalog.snapshot();
                let shares = snapshot
                    .shared_with(&self.project)
                    .any(|(owner, _)| owner == other);
                shares.then(|| {
                    Arc::new(SharedSchema {
                        engine: self.engine.clone(),
                        owner: other.to_string(),
                        reader: self.project.clone(),
                        pins: self.pins.clone(),
                    }) as Arc<dyn SchemaProvider>
                })
            }
        }
    }
}

/// `<project>.<group>`: the feature groups another project shares with this one (every
/// version, by bare name and `<name>_<version>`), read-only.
#[derive(Debug)]
struct SharedSchema {
    engine: Arc<Engine>,
    /// The project that owns the groups.
    owner: String,
    /// The session's project, which they are shared with.
    reader: String,
    pins: Arc<HashMap<Oid, u64>>,
}

impl SharedSchema {
    fn shared_relation(&self, name: &str) -> Option<Relation> {
        let snapshot = self.engine.catalog.snapshot();
        let relation = snapshot.resolve(&self.owner, name)?;
        let shared = relation.feature_group().is_some()
            && snapshot
                .shared_with(&self.reader)
                .any(|(owner, group)| owner == self.owner && group == relation.name);
        shared.then(|| relation.clone())
    }
}

#[async_trait]
impl SchemaProvider for SharedSchema {
    fn table_names(&self) -> Vec<String> {
        let snapshot = self.engine.catalog.snapshot();
        let groups: Vec<&str> = snapshot
            .shared_with(&self.reader)
            .filter(|(owner, _)| *owner == self.owner)
            .map(|(_, group)| group)
            .collect();
        let mut names = Vec::new();
        for relation in snapshot.relations(&self.owner) {
            if relation.feature_group().is_some() && groups.contains(&relation.name.as_str()) {
                names.push(relation.qualified_name());
                if !names.contains(&relation.name) {
                    names.push(relation.name.clone());
                }
            }
        }
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.shared_relation(name).map(|relation| {
            let pinned = self.pins.get(&relation.oid).copied();
            Arc::new(
                RelationTable::new(relation, self.engine.clone())
                    .pinned_at(pinned)
                    .shared(),
            ) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.shared_relation(name).is_some()
    }
}

/// Feature groups (by bare name and `<name>_<version>`) and plain tables of a project.
#[derive(Debug)]
struct PublicSchema {
    engine: Arc<Engine>,
    project: String,
    pins: Arc<HashMap<Oid, u64>>,
}

#[async_trait]
impl SchemaProvider for PublicSchema {
    fn table_names(&self) -> Vec<String> {
        let snapshot = self.engine.catalog.snapshot();
        let mut names = Vec::new();
        for relation in snapshot.relations(&self.project) {
            names.push(relation.qualified_name());
            if relation.feature_group().is_some() && !names.contains(&relation.name) {
                names.push(relation.name.clone());
            }
        }
        for view in snapshot.feature_views(&self.project) {
            names.push(view.qualified_name());
            if !names.contains(&view.name) {
                names.push(view.name.clone());
            }
        }
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let snapshot = self.engine.catalog.snapshot();
        let Some(relation) = snapshot.resolve(&self.project, name).cloned() else {
            // Queries never get here for a view (they expand it first); listings do.
            return match snapshot.resolve_feature_view(&self.project, name) {
                Some(view) => feature_view::view_table(&self.engine, &self.project, view)
                    .await
                    .map(Some)
                    .map_err(|e| DataFusionError::External(Box::new(e))),
                None => Ok(None),
            };
        };
        let pinned = self.pins.get(&relation.oid).copied();
        Ok(Some(Arc::new(
            RelationTable::new(relation, self.engine.clone()).pinned_at(pinned),
        )))
    }

    fn table_exist(&self, name: &str) -> bool {
        let snapshot = self.engine.catalog.snapshot();
        snapshot.resolve(&self.project, name).is_some()
            || snapshot.resolve_feature_view(&self.project, name).is_some()
    }
}

/// `online.<group>`: the online feature groups of a project, by bare name (latest version) and
/// `<name>_<version>`. Naming a group that is not online is an error that says how to enable it.
#[derive(Debug)]
struct OnlineSchema {
    engine: Arc<Engine>,
    project: String,
}

#[async_trait]
impl SchemaProvider for OnlineSchema {
    fn table_names(&self) -> Vec<String> {
        let snapshot = self.engine.catalog.snapshot();
        let mut names = Vec::new();
        for relation in snapshot.relations(&self.project) {
            if relation
                .feature_group()
                .is_some_and(|spec| spec.options.online)
            {
                names.push(relation.qualified_name());
                if !names.contains(&relation.name) {
                    names.push(relation.name.clone());
                }
            }
        }
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let snapshot = self.engine.catalog.snapshot();
        let Some(relation) = snapshot.resolve(&self.project, name).cloned() else {
            return Ok(None);
        };
        if relation.feature_group().is_none() {
            return Ok(None);
        }
        OnlineTable::new(relation, self.engine.online.clone())
            .map(|table| Some(Arc::new(table) as Arc<dyn TableProvider>))
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.engine
            .catalog
            .snapshot()
            .resolve(&self.project, name)
            .is_some_and(|r| r.feature_group().is_some())
    }
}

/// `quiver.feature_groups`, `quiver.features` and `quiver.tables`: the catalog as queryable tables.
#[derive(Debug)]
struct DiscoverySchema {
    engine: Arc<Engine>,
    project: String,
    viewer: String,
}

#[async_trait]
impl SchemaProvider for DiscoverySchema {
    fn table_names(&self) -> Vec<String> {
        discovery::TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        discovery::table(&self.engine, &self.project, &self.viewer, name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn table_exist(&self, name: &str) -> bool {
        discovery::TABLES.contains(&name)
    }
}
