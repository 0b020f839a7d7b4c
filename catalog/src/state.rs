//! The catalog as a deterministic state machine: `CatalogState::apply` is the only way it changes.
//!
//! Everything `apply` needs comes in the command (names, owners, timestamps), and OIDs are handed out
//! from a counter that is part of the state, so replaying the same log anywhere gives the same
//! catalog. That is what lets the Raft issue replace the local log without touching the callers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::access::{ProjectRole, ScramVerifier};
use crate::error::{CatalogError, CatalogResult};
use crate::model::{
    Column, ExperimentRun, FIRST_USER_OID, FeatureGroupOptionsPatch, FeatureGroupSpec, FeatureView,
    Model, Oid, Project, Relation, RelationKind, Shard, TrainingDataset, User,
};

/// A change to the catalog. Commands are the entries of the catalog log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CatalogCommand {
    CreateUser {
        name: String,
        superuser: bool,
        #[serde(default)]
        password: Option<ScramVerifier>,
        #[serde(default)]
        connection_limit: Option<u32>,
    },
    AlterUser {
        name: String,
        change: UserChange,
    },
    /// Drops a user and their project memberships; refused while they own anything.
    DropUser {
        name: String,
    },
    /// Makes `user` a member of `project` with `role`, replacing the role they had.
    Grant {
        project: String,
        user: String,
        role: ProjectRole,
    },
    /// Removes `user` from `project`'s members.
    Revoke {
        project: String,
        user: String,
    },
    /// Lets `with` read every version of feature group `group` of `project`.
    ShareFeatureGroup {
        project: String,
        group: String,
        with: String,
    },
    UnshareFeatureGroup {
        project: String,
        group: String,
        with: String,
    },
    CreateProject {
        name: String,
        description: Option<String>,
        owner: String,
        created_at: DateTime<Utc>,
    },
    DropProject {
        name: String,
        cascade: bool,
    },
    /// Creates a feature group version or a plain table; the OID is assigned by `apply`.
    CreateRelation {
        project: String,
        name: String,
        kind: RelationKind,
        columns: Vec<Column>,
        primary_key: Vec<String>,
        owner: String,
        created_at: DateTime<Utc>,
    },
    AlterFeatureGroup {
        project: String,
        name: String,
        version: u32,
        patch: FeatureGroupOptionsPatch,
    },
    AddColumn {
        project: String,
        name: String,
        version: u32,
        column: Column,
    },
    /// Drops relations by OID (a plain table, or feature group versions) as one change.
    DropRelations {
        oids: Vec<Oid>,
    },
    /// Creates a feature view version; the OID in the command is replaced by a fresh one.
    CreateFeatureView(FeatureView),
    DropFeatureViews {
        oids: Vec<Oid>,
    },
    /// Records a training dataset whose files are written; the OID is replaced by a fresh one.
    CreateTrainingDataset(Box<TrainingDataset>),
    DropTrainingDatasets {
        oids: Vec<Oid>,
    },
    /// Registers a model version and records the run that trained it, as one change; the OID in
    /// the model is replaced by a fresh one and the run gets the model's version.
    CreateModel {
        model: Box<Model>,
        run: Box<ExperimentRun>,
    },
    /// Records runs that registered no model (the trials of a search that were not the best).
    RecordRuns(Vec<ExperimentRun>),
    DropModels {
        oids: Vec<Oid>,
    },
    /// Records where cluster member `node_id` serves SQL (each member registers itself).
    RegisterNode {
        node_id: u64,
        sql_addr: String,
    },
    /// Sets the cluster's shard map: which Raft group serves which part of the online store's
    /// key space (the cluster's bootstrap defines one shard for all keys).
    DefineShards {
        shards: Vec<Shard>,
    },
}

/// What `ALTER USER` changes; `None` leaves an attribute as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserChange {
    /// `Some(None)`: `PASSWORD NULL`, the user can no longer log in with a password.
    pub password: Option<Option<ScramVerifier>>,
    pub superuser: Option<bool>,
    /// `Some(None)`: `CONNECTION LIMIT -1`, no limit of the user's own.
    pub connection_limit: Option<Option<u32>>,
}

/// What applying a command produced, for the caller to act on (e.g. storage to create or remove).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    Nothing,
    Project(Oid),
    Relation(Oid),
    /// The relations a drop removed, whose stored data may now be deleted.
    Dropped(Vec<Relation>),
    FeatureView(Oid),
    TrainingDataset(Oid),
    /// The training datasets a drop removed, whose files may now be deleted.
    DroppedDatasets(Vec<TrainingDataset>),
    Model(Oid),
    /// The model versions a drop removed, whose artifacts may now be deleted.
    DroppedModels(Vec<Model>),
}

/// The whole catalog: everything needed to answer a name lookup or a listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatalogState {
    next_oid: Oid,
    /// How many commands have been applied: the log position this state reflects.
    applied_commands: u64,
    users: BTreeMap<String, User>,
    projects: BTreeMap<String, Project>,
    relations: BTreeMap<Oid, Relation>,
    feature_views: BTreeMap<Oid, FeatureView>,
    training_datasets: BTreeMap<Oid, TrainingDataset>,
    #[serde(default)]
    models: BTreeMap<Oid, Model>,
    /// Every training run, in the order they were recorded.
    #[serde(default)]
    experiment_runs: Vec<ExperimentRun>,
    /// Each cluster member's SQL address, by node id, as the members registered them.
    #[serde(default)]
    sql_addrs: BTreeMap<u64, String>,
    /// The cluster's shard map (empty on a single node).
    #[serde(default)]
    shards: Vec<Shard>,
}

impl CatalogState {
    /// An empty catalog.
    pub fn new() -> Self {
        CatalogState {
            next_oid: FIRST_USER_OID,
            ..Default::default()
        }
    }

    /// The cluster's shards of the online store's key space, by id (empty on a single node and
    /// before the cluster's bootstrap).
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Where cluster member `node_id` serves SQL, once it has registered.
    pub fn sql_addr(&self, node_id: u64) -> Option<&str> {
        self.sql_addrs.get(&node_id).map(String::as_str)
    }

    /// How many commands this state reflects.
    pub fn applied_commands(&self) -> u64 {
        self.applied_commands
    }

    /// Applies one command. On error the state is unchanged: every check comes before any change.
    pub fn apply(&mut self, command: &CatalogCommand) -> CatalogResult<Applied> {
        let applied = match command {
            CatalogCommand::CreateUser {
                name,
                superuser,
                password,
                connection_limit,
            } => {
                if self.users.contains_key(name) {
                    return Err(CatalogError::Duplicate(format!("role \"{name}\"")));
                }
                let oid = self.allocate_oid();
                self.users.insert(
                    name.clone(),
                    User {
                        oid,
                        name: name.clone(),
                        superuser: *superuser,
                        password: password.clone(),
                        connection_limit: *connection_limit,
                    },
                );
                Applied::Nothing
            }
            CatalogCommand::AlterUser { name, change } => {
                let user = self
                    .users
                    .get_mut(name)
                    .ok_or_else(|| CatalogError::UndefinedRole(name.clone()))?;
                if let Some(password) = &change.password {
                    user.password = password.clone();
                }
                if let Some(superuser) = change.superuser {
                    user.superuser = superuser;
                }
                if let Some(limit) = change.connection_limit {
                    user.connection_limit = limit;
                }
                Applied::Nothing
            }
            CatalogCommand::DropUser { name } => {
                if !self.users.contains_key(name) {
                    return Err(CatalogError::UndefinedRole(name.clone()));
                }
                let mut owned: Vec<String> = self
                    .projects
                    .values()
                    .filter(|p| &p.owner == name)
                    .map(|p| format!("project {}", p.name))
                    .collect();
                owned.extend(
                    self.relations
                        .values()
                        .filter(|r| &r.owner == name)
                        .map(|r| format!("{}.{}", r.project, r.qualified_name())),
                );
                owned.extend(
                    self.feature_views
                        .values()
                        .filter(|v| &v.owner == name)
                        .map(|v| format!("feature view {}.{}", v.project, v.name)),
                );
                owned.extend(
                    self.training_datasets
                        .values()
                        .filter(|d| &d.owner == name)
                        .map(|d| format!("training dataset {}.{}", d.project, d.name)),
                );
                owned.extend(
                    self.models
                        .values()
                        .filter(|m| &m.owner == name)
                        .map(|m| format!("model {}.{}", m.project, m.name)),
                );
                if !owned.is_empty() {
                    return Err(CatalogError::DependentObjects(format!(
                        "role \"{name}\" cannot be dropped because it owns {}",
                        owned.join(", ")
                    )));
                }
                self.users.remove(name);
                for project in self.projects.values_mut() {
                    project.members.remove(name);
                }
                Applied::Nothing
            }
            CatalogCommand::Grant {
                project,
                user,
                role,
            } => {
                if !self.users.contains_key(user) {
                    return Err(CatalogError::UndefinedRole(user.clone()));
                }
                self.project_mut(project)?
                    .members
                    .insert(user.clone(), *role);
                Applied::Nothing
            }
            CatalogCommand::Revoke { project, user } => {
                if !self.users.contains_key(user) {
                    return Err(CatalogError::UndefinedRole(user.clone()));
                }
                self.project_mut(project)?.members.remove(user);
                Applied::Nothing
            }
            CatalogCommand::ShareFeatureGroup {
                project,
                group,
                with,
            } => {
                if !self.projects.contains_key(with) {
                    return Err(CatalogError::UndefinedProject(with.clone()));
                }
                if with == project {
                    return Err(CatalogError::InvalidShare(format!(
                        "feature group \"{group}\" already belongs to project \"{project}\""
                    )));
                }
                if !self
                    .relations(project)
                    .any(|r| &r.name == group && r.feature_group().is_some())
                {
                    return Err(CatalogError::UndefinedFeatureGroup(group.clone()));
                }
                self.project_mut(project)?
                    .shares
                    .entry(group.clone())
                    .or_default()
                    .insert(with.clone());
                Applied::Nothing
            }
            CatalogCommand::UnshareFeatureGroup {
                project,
                group,
                with,
            } => {
                let shares = &mut self.project_mut(project)?.shares;
                let removed = shares
                    .get_mut(group)
                    .is_some_and(|with_projects| with_projects.remove(with));
                if !removed {
                    return Err(CatalogError::InvalidShare(format!(
                        "feature group \"{group}\" is not shared with project \"{with}\""
                    )));
                }
                shares.retain(|_, with_projects| !with_projects.is_empty());
                Applied::Nothing
            }
            CatalogCommand::CreateProject {
                name,
                description,
                owner,
                created_at,
            } => {
                if self.projects.contains_key(name) {
                    return Err(CatalogError::Duplicate(format!("project \"{name}\"")));
                }
                let oid = self.allocate_oid();
                self.projects.insert(
                    name.clone(),
                    Project {
                        oid,
                        name: name.clone(),
                        description: description.clone(),
                        owner: owner.clone(),
                        created_at: *created_at,
                        members: BTreeMap::from([(owner.clone(), ProjectRole::DataOwner)]),
                        shares: BTreeMap::new(),
                    },
                );
                Applied::Project(oid)
            }
            CatalogCommand::DropProject { name, cascade } => {
                if !self.projects.contains_key(name) {
                    return Err(CatalogError::UndefinedProject(name.clone()));
                }
                let contained: Vec<Oid> = self
                    .relations
                    .values()
                    .filter(|r| &r.project == name)
                    .map(|r| r.oid)
                    .collect();
                if !contained.is_empty() && !cascade {
                    return Err(CatalogError::DependentObjects(format!(
                        "project \"{name}\" holds {} relation(s); use DROP PROJECT {name} CASCADE",
                        contained.len()
                    )));
                }
                self.projects.remove(name);
                for project in self.projects.values_mut() {
                    for with_projects in project.shares.values_mut() {
                        with_projects.remove(name);
                    }
                    project
                        .shares
                        .retain(|_, with_projects| !with_projects.is_empty());
                }
                // A project's views go with it; its training datasets' files are left where they
                // were written (a location may be shared storage the project never owned).
                self.feature_views.retain(|_, v| &v.project != name);
                self.training_datasets.retain(|_, d| &d.project != name);
                self.models.retain(|_, m| &m.project != name);
                self.experiment_runs.retain(|r| &r.project != name);
                let dropped = contained
                    .iter()
                    .filter_map(|oid| self.relations.remove(oid))
                    .collect();
                Applied::Dropped(dropped)
            }
            CatalogCommand::CreateRelation {
                project,
                name,
                kind,
                columns,
                primary_key,
                owner,
                created_at,
            } => {
                self.check_new_relation(project, name, kind, columns, primary_key)?;
                let oid = self.allocate_oid();
                self.relations.insert(
                    oid,
                    Relation {
                        oid,
                        project: project.clone(),
                        name: name.clone(),
                        kind: kind.clone(),
                        columns: columns.clone(),
                        primary_key: primary_key.clone(),
                        owner: owner.clone(),
                        created_at: *created_at,
                    },
                );
                Applied::Relation(oid)
            }
            CatalogCommand::AlterFeatureGroup {
                project,
                name,
                version,
                patch,
            } => {
                let oid = self.feature_group_oid(project, name, Some(*version))?;
                if let Some(RelationKind::FeatureGroup(spec)) =
                    self.relations.get_mut(&oid).map(|r| &mut r.kind)
                {
                    spec.options.apply(patch);
                }
                Applied::Relation(oid)
            }
            CatalogCommand::AddColumn {
                project,
                name,
                version,
                column,
            } => {
                let oid = self.feature_group_oid(project, name, Some(*version))?;
                let relation = self
                    .relations
                    .get_mut(&oid)
                    .ok_or_else(|| CatalogError::UndefinedRelation(name.clone()))?;
                if relation.column(&column.name).is_some() {
                    return Err(CatalogError::DuplicateColumn {
                        relation: relation.qualified_name(),
                        column: column.name.clone(),
                    });
                }
                relation.columns.push(column.clone());
                Applied::Relation(oid)
            }
            CatalogCommand::DropRelations { oids } => {
                if let Some(missing) = oids.iter().find(|oid| !self.relations.contains_key(oid)) {
                    return Err(CatalogError::UndefinedRelation(format!("oid {missing}")));
                }
                if let Some((view, relation)) = self.feature_views.values().find_map(|view| {
                    view.depends_on
                        .iter()
                        .find(|oid| oids.contains(oid))
                        .and_then(|oid| self.relations.get(oid))
                        .map(|relation| (view, relation))
                }) {
                    return Err(CatalogError::DependentObjects(format!(
                        "feature view \"{}\" version {} reads \"{}\"; drop the feature view first",
                        view.name,
                        view.version,
                        relation.qualified_name()
                    )));
                }
                let dropped: Vec<Relation> = oids
                    .iter()
                    .filter_map(|oid| self.relations.remove(oid))
                    .collect();
                // A share names a feature group, not a version: it ends with the last version.
                for relation in &dropped {
                    let remaining = self
                        .relations
                        .values()
                        .any(|r| r.project == relation.project && r.name == relation.name);
                    if !remaining && let Some(project) = self.projects.get_mut(&relation.project) {
                        project.shares.remove(&relation.name);
                    }
                }
                Applied::Dropped(dropped)
            }
            CatalogCommand::CreateFeatureView(view) => {
                self.check_new_feature_view(view)?;
                let oid = self.allocate_oid();
                self.feature_views.insert(
                    oid,
                    FeatureView {
                        oid,
                        ..view.clone()
                    },
                );
                Applied::FeatureView(oid)
            }
            CatalogCommand::RegisterNode { node_id, sql_addr } => {
                self.sql_addrs.insert(*node_id, sql_addr.clone());
                Applied::Nothing
            }
            CatalogCommand::DefineShards { shards } => {
                Shard::check_cover(shards).map_err(CatalogError::InvalidShard)?;
                self.shards = shards.clone();
                Applied::Nothing
            }
            CatalogCommand::DropFeatureViews { oids } => {
                if let Some(missing) = oids.iter().find(|o| !self.feature_views.contains_key(o)) {
                    return Err(CatalogError::UndefinedObject {
                        kind: "feature view",
                        name: format!("oid {missing}"),
                    });
                }
                for oid in oids {
                    self.feature_views.remove(oid);
                }
                Applied::Nothing
            }
            CatalogCommand::CreateTrainingDataset(dataset) => {
                if !self.projects.contains_key(&dataset.project) {
                    return Err(CatalogError::UndefinedProject(dataset.project.clone()));
                }
                if self
                    .training_dataset_versions(&dataset.project, &dataset.name)
                    .any(|d| d.version == dataset.version)
                {
                    return Err(CatalogError::Duplicate(format!(
                        "training dataset \"{}\" version {}",
                        dataset.name, dataset.version
                    )));
                }
                let oid = self.allocate_oid();
                self.training_datasets.insert(
                    oid,
                    TrainingDataset {
                        oid,
                        ..dataset.as_ref().clone()
                    },
                );
                Applied::TrainingDataset(oid)
            }
            CatalogCommand::DropTrainingDatasets { oids } => {
                if let Some(missing) = oids
                    .iter()
                    .find(|o| !self.training_datasets.contains_key(o))
                {
                    return Err(CatalogError::UndefinedObject {
                        kind: "training dataset",
                        name: format!("oid {missing}"),
                    });
                }
                let dropped = oids
                    .iter()
                    .filter_map(|oid| self.training_datasets.remove(oid))
                    .collect();
                Applied::DroppedDatasets(dropped)
            }
            CatalogCommand::CreateModel { model, run } => {
                if !self.projects.contains_key(&model.project) {
                    return Err(CatalogError::UndefinedProject(model.project.clone()));
                }
                if self
                    .model_versions(&model.project, &model.name)
                    .any(|m| m.version == model.version)
                {
                    return Err(CatalogError::Duplicate(format!(
                        "model \"{}\" version {}",
                        model.name, model.version
                    )));
                }
                self.check_new_runs(std::slice::from_ref(run.as_ref()))?;
                let oid = self.allocate_oid();
                self.models.insert(
                    oid,
                    Model {
                        oid,
                        ..model.as_ref().clone()
                    },
                );
                self.experiment_runs.push(ExperimentRun {
                    model_version: Some(model.version),
                    ..run.as_ref().clone()
                });
                Applied::Model(oid)
            }
            CatalogCommand::RecordRuns(runs) => {
                self.check_new_runs(runs)?;
                self.experiment_runs.extend(runs.iter().cloned());
                Applied::Nothing
            }
            CatalogCommand::DropModels { oids } => {
                if let Some(missing) = oids.iter().find(|o| !self.models.contains_key(o)) {
                    return Err(CatalogError::UndefinedObject {
                        kind: "model",
                        name: format!("oid {missing}"),
                    });
                }
                let dropped = oids
                    .iter()
                    .filter_map(|oid| self.models.remove(oid))
                    .collect();
                Applied::DroppedModels(dropped)
            }
        };
        self.applied_commands += 1;
        Ok(applied)
    }

    /// Runs are recorded once, in projects that exist.
    fn check_new_runs(&self, runs: &[ExperimentRun]) -> CatalogResult<()> {
        for (i, run) in runs.iter().enumerate() {
            if !self.projects.contains_key(&run.project) {
                return Err(CatalogError::UndefinedProject(run.project.clone()));
            }
            if self.experiment_runs.iter().any(|r| r.run_id == run.run_id)
                || runs[..i].iter().any(|r| r.run_id == run.run_id)
            {
                return Err(CatalogError::Duplicate(format!(
                    "experiment run \"{}\"",
                    run.run_id
                )));
            }
        }
        Ok(())
    }

    fn project_mut(&mut self, name: &str) -> CatalogResult<&mut Project> {
        self.projects
            .get_mut(name)
            .ok_or_else(|| CatalogError::UndefinedProject(name.to_string()))
    }

    fn allocate_oid(&mut self) -> Oid {
        let oid = self.next_oid;
        self.next_oid += 1;
        oid
    }

    fn check_new_relation(
        &self,
        project: &str,
        name: &str,
        kind: &RelationKind,
        columns: &[Column],
        primary_key: &[String],
    ) -> CatalogResult<()> {
        if !self.projects.contains_key(project) {
            return Err(CatalogError::UndefinedProject(project.to_string()));
        }
        let mut seen = std::collections::HashSet::new();
        for column in columns {
            if !seen.insert(column.name.as_str()) {
                return Err(CatalogError::DuplicateColumn {
                    relation: name.to_string(),
                    column: column.name.clone(),
                });
            }
        }
        for key in primary_key {
            if !seen.contains(key.as_str()) {
                return Err(CatalogError::UndefinedColumn {
                    relation: name.to_string(),
                    column: key.clone(),
                });
            }
        }
        if self.resolve_feature_view(project, name).is_some() {
            return Err(CatalogError::Duplicate(format!(
                "relation \"{name}\" (a feature view of that name exists)"
            )));
        }
        match kind {
            RelationKind::Table => {
                if self.resolve(project, name).is_some() || self.has_feature_group(project, name) {
                    return Err(CatalogError::Duplicate(format!("relation \"{name}\"")));
                }
            }
            RelationKind::FeatureGroup(FeatureGroupSpec {
                version,
                event_time,
                ..
            }) => {
                if let Some(event_time) = event_time
                    && !seen.contains(event_time.as_str())
                {
                    return Err(CatalogError::UndefinedColumn {
                        relation: name.to_string(),
                        column: event_time.clone(),
                    });
                }
                if self
                    .feature_group_versions(project, name)
                    .any(|r| r.feature_group().is_some_and(|s| s.version == *version))
                {
                    return Err(CatalogError::Duplicate(format!(
                        "feature group \"{name}\" version {version}"
                    )));
                }
                let versioned = format!("{name}_{version}");
                if self.is_table(project, name) || self.is_table(project, &versioned) {
                    return Err(CatalogError::Duplicate(format!(
                        "relation \"{name}\" (a table of that name exists)"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_new_feature_view(&self, view: &FeatureView) -> CatalogResult<()> {
        if !self.projects.contains_key(&view.project) {
            return Err(CatalogError::UndefinedProject(view.project.clone()));
        }
        if let Some(missing) = view
            .depends_on
            .iter()
            .find(|oid| !self.relations.contains_key(oid))
        {
            return Err(CatalogError::UndefinedRelation(format!("oid {missing}")));
        }
        if self
            .feature_view_versions(&view.project, &view.name)
            .any(|v| v.version == view.version)
        {
            return Err(CatalogError::Duplicate(format!(
                "feature view \"{}\" version {}",
                view.name, view.version
            )));
        }
        // Views and relations share the `public` schema: neither name form may be taken.
        for name in [view.name.clone(), view.qualified_name()] {
            if self.resolve(&view.project, &name).is_some() {
                return Err(CatalogError::Duplicate(format!(
                    "relation \"{name}\" (a feature group or table of that name exists)"
                )));
            }
        }
        Ok(())
    }

    fn is_table(&self, project: &str, name: &str) -> bool {
        self.relations
            .values()
            .any(|r| r.project == project && r.name == name && r.kind == RelationKind::Table)
    }

    fn has_feature_group(&self, project: &str, name: &str) -> bool {
        self.feature_group_versions(project, name).next().is_some()
    }

    /// Every version of a feature group, oldest first.
    pub fn feature_group_versions<'a>(
        &'a self,
        project: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Relation> + 'a {
        self.relations
            .values()
            .filter(move |r| r.project == project && r.name == name && r.feature_group().is_some())
    }

    /// A feature group version, or its latest version when `version` is `None`.
    pub fn feature_group(
        &self,
        project: &str,
        name: &str,
        version: Option<u32>,
    ) -> CatalogResult<&Relation> {
        let oid = self.feature_group_oid(project, name, version)?;
        self.relations
            .get(&oid)
            .ok_or_else(|| CatalogError::UndefinedRelation(name.to_string()))
    }

    fn feature_group_oid(
        &self,
        project: &str,
        name: &str,
        version: Option<u32>,
    ) -> CatalogResult<Oid> {
        let versions = self.feature_group_versions(project, name);
        let found = match version {
            Some(v) => versions
                .filter(|r| r.feature_group().is_some_and(|s| s.version == v))
                .last(),
            None => versions.max_by_key(|r| r.feature_group().map(|s| s.version)),
        };
        match (found, version) {
            (Some(relation), _) => Ok(relation.oid),
            (None, Some(v)) if self.has_feature_group(project, name) => {
                Err(CatalogError::UndefinedVersion {
                    kind: "feature group",
                    name: name.to_string(),
                    version: v,
                })
            }
            (None, _) => Err(CatalogError::UndefinedFeatureGroup(name.to_string())),
        }
    }

    /// Resolves a relation name as SQL sees it: a plain table, a feature group's bare name (its
    /// latest version), or `<name>_<version>`.
    pub fn resolve(&self, project: &str, name: &str) -> Option<&Relation> {
        if let Some(table) = self
            .relations
            .values()
            .find(|r| r.project == project && r.name == name && r.kind == RelationKind::Table)
        {
            return Some(table);
        }
        if let Ok(latest) = self.feature_group(project, name, None) {
            return Some(latest);
        }
        let (base, version) = name.rsplit_once('_')?;
        let version: u32 = version.parse().ok()?;
        self.feature_group(project, base, Some(version)).ok()
    }

    /// The relation with this OID.
    pub fn relation(&self, oid: Oid) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// Every relation of a project, in OID order (creation order).
    pub fn relations<'a>(&'a self, project: &'a str) -> impl Iterator<Item = &'a Relation> + 'a {
        self.relations
            .values()
            .filter(move |r| r.project == project)
    }

    /// Every relation of every project.
    pub fn all_relations(&self) -> impl Iterator<Item = &Relation> {
        self.relations.values()
    }

    /// The project with this name.
    pub fn project(&self, name: &str) -> Option<&Project> {
        self.projects.get(name)
    }

    /// Every project, by name.
    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.values()
    }

    /// What `user` may do in `project`: superusers everything, members what their role allows,
    /// anyone else nothing (`None`).
    pub fn role_in(&self, project: &str, user: &str) -> Option<ProjectRole> {
        if self.user(user)?.superuser {
            return self.project(project).map(|_| ProjectRole::DataOwner);
        }
        self.project(project)?.members.get(user).copied()
    }

    /// The projects `user` may see: every one for a superuser, those they are a member of for
    /// anyone else.
    pub fn visible_projects<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a Project> + 'a {
        let superuser = self.user(user).is_some_and(|u| u.superuser);
        self.projects
            .values()
            .filter(move |p| superuser || p.members.contains_key(user))
    }

    /// The feature groups other projects share with `project`: (owning project, group name).
    pub fn shared_with<'a>(
        &'a self,
        project: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.projects.values().flat_map(move |owner| {
            owner
                .shares
                .iter()
                .filter(move |(_, with)| with.contains(project))
                .map(move |(group, _)| (owner.name.as_str(), group.as_str()))
        })
    }

    /// The user with this name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// The feature view version with this OID.
    pub fn feature_view_by_oid(&self, oid: Oid) -> Option<&FeatureView> {
        self.feature_views.get(&oid)
    }

    /// Every version of a feature view, oldest first.
    pub fn feature_view_versions<'a>(
        &'a self,
        project: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a FeatureView> + 'a {
        self.feature_views
            .values()
            .filter(move |v| v.project == project && v.name == name)
    }

    /// A feature view version, or its latest version when `version` is `None`.
    pub fn feature_view(
        &self,
        project: &str,
        name: &str,
        version: Option<u32>,
    ) -> CatalogResult<&FeatureView> {
        latest_or_exact(
            self.feature_views
                .values()
                .filter(|v| v.project == project && v.name == name),
            |v| v.version,
            version,
            "feature view",
            name,
        )
    }

    /// Resolves a name as SQL sees it: a feature view's bare name (its latest version) or
    /// `<name>_<version>`.
    pub fn resolve_feature_view(&self, project: &str, name: &str) -> Option<&FeatureView> {
        if let Ok(latest) = self.feature_view(project, name, None) {
            return Some(latest);
        }
        let (base, version) = name.rsplit_once('_')?;
        let version: u32 = version.parse().ok()?;
        self.feature_view(project, base, Some(version)).ok()
    }

    /// Every feature view of a project, in creation order.
    pub fn feature_views<'a>(
        &'a self,
        project: &'a str,
    ) -> impl Iterator<Item = &'a FeatureView> + 'a {
        self.feature_views
            .values()
            .filter(move |v| v.project == project)
    }

    /// Every version of a training dataset, oldest first.
    pub fn training_dataset_versions<'a>(
        &'a self,
        project: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a TrainingDataset> + 'a {
        self.training_datasets
            .values()
            .filter(move |d| d.project == project && d.name == name)
    }

    /// A training dataset version, or its latest version when `version` is `None`.
    pub fn training_dataset(
        &self,
        project: &str,
        name: &str,
        version: Option<u32>,
    ) -> CatalogResult<&TrainingDataset> {
        latest_or_exact(
            self.training_datasets
                .values()
                .filter(|d| d.project == project && d.name == name),
            |d| d.version,
            version,
            "training dataset",
            name,
        )
    }

    /// Every training dataset of a project, in creation order.
    pub fn training_datasets<'a>(
        &'a self,
        project: &'a str,
    ) -> impl Iterator<Item = &'a TrainingDataset> + 'a {
        self.training_datasets
            .values()
            .filter(move |d| d.project == project)
    }
}

impl CatalogState {
    /// Every version of a model, oldest first.
    pub fn model_versions<'a>(
        &'a self,
        project: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Model> + 'a {
        self.models
            .values()
            .filter(move |m| m.project == project && m.name == name)
    }

    /// A model version, or its latest version when `version` is `None`.
    pub fn model(&self, project: &str, name: &str, version: Option<u32>) -> CatalogResult<&Model> {
        latest_or_exact(
            self.models
                .values()
                .filter(|m| m.project == project && m.name == name),
            |m| m.version,
            version,
            "model",
            name,
        )
    }

    /// A model version by OID.
    pub fn model_by_oid(&self, oid: Oid) -> Option<&Model> {
        self.models.get(&oid)
    }

    /// Every model version of a project, in registration order.
    pub fn models<'a>(&'a self, project: &'a str) -> impl Iterator<Item = &'a Model> + 'a {
        self.models.values().filter(move |m| m.project == project)
    }

    /// Every experiment run of a project, in the order they were recorded.
    pub fn experiment_runs<'a>(
        &'a self,
        project: &'a str,
    ) -> impl Iterator<Item = &'a ExperimentRun> + 'a {
        self.experiment_runs
            .iter()
            .filter(move |r| r.project == project)
    }
}

/// The object of `versions` with this version, or the latest one when `version` is `None`.
fn latest_or_exact<'a, T>(
    versions: impl Iterator<Item = &'a T>,
    version_of: impl Fn(&T) -> u32,
    version: Option<u32>,
    kind: &'static str,
    name: &str,
) -> CatalogResult<&'a T> {
    let mut any = false;
    let mut found: Option<&T> = None;
    for candidate in versions {
        any = true;
        let better = match version {
            Some(v) => version_of(candidate) == v,
            None => found.is_none_or(|f| version_of(candidate) > version_of(f)),
        };
        if better {
            found = Some(candidate);
        }
    }
    match (found, version) {
        (Some(object), _) => Ok(object),
        (None, Some(v)) if any => Err(CatalogError::UndefinedVersion {
            kind,
            name: name.to_string(),
            version: v,
        }),
        (None, _) => Err(CatalogError::UndefinedObject {
            kind,
            name: name.to_string(),
        }),
    }
}
