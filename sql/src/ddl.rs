//! DDL: feature groups, plain tables and projects, executed against the catalog and the offline
//! store.
//!
//! Order of effects: the catalog command is made durable first (it assigns the OID), then the
//! offline table is created. A crash in between leaves a catalog entry without storage, which
//! [`crate::Engine::open`] repairs by creating the empty table; a drop removes the catalog entry
//! first and the files after, and leftover files are removed at the next start.

use chrono::Utc;
use datafusion::sql::sqlparser::ast::{self, ColumnDef, ColumnOption, ObjectName, TableConstraint};
use quiver_catalog::raft::MembershipChange;
use quiver_catalog::{
    Applied, CatalogCommand, CatalogError, Column, FeatureGroupOptions, FeatureGroupOptionsPatch,
    FeatureGroupSpec, Relation, RelationKind,
};

use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::parser::{
    AlterFeatureGroupAction, ClusterChange, CreateFeatureGroup, OptionEntry, OptionValue,
    Statement, column_is_inline_primary_key, normalize_ident, object_name_to_string, quote_literal,
};
use crate::partitioning::{Partitioning, stored_schema};
use crate::session::CommandTag;
use crate::types::column_type;

/// Whether `CREATE <kind> IF NOT EXISTS name [VERSION n]` finds what it would create: that
/// version, or (without VERSION) any version of the name.
pub(crate) fn already_exists(requested: Option<u32>, existing: &[u32]) -> bool {
    match requested {
        Some(version) => existing.contains(&version),
        None => !existing.is_empty(),
    }
}

/// The version a `CREATE <kind> name [VERSION n]` makes: the one named, or 1 for a new name;
/// omitting VERSION for an existing name is 42P07.
pub(crate) fn version_to_create(
    kind: &str,
    name: &str,
    requested: Option<u32>,
    existing: &[u32],
) -> SqlResult<u32> {
    match requested {
        Some(version) => Ok(version),
        None if existing.is_empty() => Ok(1),
        None => Err(SqlError::Duplicate(format!(
            "{kind} \"{name}\" already exists; name a new VERSION to create another version"
        ))),
    }
}

/// The OIDs a `DROP <kind> [IF EXISTS] name [VERSION n]` removes: the version named (`exact`),
/// or every version (`all`). Empty when IF EXISTS finds nothing; 42P01 without it.
pub(crate) fn oids_to_drop<T>(
    kind: &str,
    name: &str,
    exact: Option<Result<T, CatalogError>>,
    all: impl FnOnce() -> Vec<u32>,
    oid: impl Fn(T) -> u32,
    if_exists: bool,
) -> SqlResult<Vec<u32>> {
    let oids = match exact {
        Some(Ok(found)) => vec![oid(found)],
        Some(Err(_)) if if_exists => Vec::new(),
        Some(Err(e)) => return Err(e.into()),
        None => all(),
    };
    if oids.is_empty() && !if_exists {
        return Err(SqlError::UndefinedTable(format!(
            "{kind} \"{name}\" does not exist"
        )));
    }
    Ok(oids)
}

/// Executes one of Quiver's own DDL statements.
pub async fn execute(
    engine: &Engine,
    project: &str,
    user: &str,
    statement: &Statement,
) -> SqlResult<CommandTag> {
    match statement {
        Statement::CreateFeatureGroup(create) => {
            create_feature_group(engine, project, user, create).await
        }
        Statement::AlterFeatureGroup {
            name,
            version,
            action,
        } => alter_feature_group(engine, project, name, *version, action).await,
        Statement::DropFeatureGroup {
            name,
            version,
            if_exists,
        } => drop_feature_group(engine, project, name, *version, *if_exists).await,
        Statement::CreateProject {
            name,
            options,
            if_not_exists,
        } => create_project(engine, user, name, options, *if_not_exists).await,
        Statement::DropProject {
            name,
            if_exists,
            cascade,
        } => drop_project(engine, project, name, *if_exists, *cascade).await,
        other => Err(SqlError::Internal(format!(
            "not a DDL statement: {other:?}"
        ))),
    }
}

/// `ALTER CLUSTER ADD NODE` / `REMOVE NODE`: a membership change of the catalog group, made by
/// its leader. Adding waits until the new node (already running) has caught up with the log.
pub async fn alter_cluster(engine: &Engine, change: &ClusterChange) -> SqlResult<CommandTag> {
    let Some(node) = engine.catalog.node() else {
        return Err(SqlError::NotSupported(
            "ALTER CLUSTER needs a cluster: this node runs alone (start quiver serve with \
             --node-id, --raft-listen and --peers)"
                .into(),
        ));
    };
    // Every group has the same members. A change that stopped half way (the catalog group
    // changed, the online store's did not) is finished by running it again.
    let online = engine.online_group().map(|group| group.group());
    let node_id = match change {
        ClusterChange::AddNode { node_id, .. } | ClusterChange::RemoveNode { node_id } => *node_id,
    };
    let in_catalog = node.has_member(node_id);
    let in_online = online.map(|group| group.has_member(node_id));
    match change {
        ClusterChange::AddNode { node_id, raft_addr } => {
            if in_catalog && in_online != Some(false) {
                return Err(SqlError::DuplicateObject(format!(
                    "node {node_id} is already a member of the cluster"
                )));
            }
            quiver_catalog::raft::check_raft_addr(raft_addr).map_err(SqlError::InvalidParameter)?;
            let add = MembershipChange::AddNode {
                node_id: *node_id,
                raft_addr: raft_addr.clone(),
            };
            if !in_catalog {
                node.change_membership(add.clone()).await?;
            }
            if let Some(group) = online.filter(|_| in_online == Some(false)) {
                group.change_membership(add).await?;
            }
        }
        ClusterChange::RemoveNode { node_id } => {
            if !in_catalog && in_online != Some(true) {
                return Err(SqlError::UndefinedObject(format!(
                    "cluster node {node_id} does not exist"
                )));
            }
            let remove = MembershipChange::RemoveNode { node_id: *node_id };
            if in_catalog {
                node.change_membership(remove.clone()).await?;
            }
            if let Some(group) = online.filter(|_| in_online == Some(true)) {
                group.change_membership(remove).await?;
            }
        }
    }
    Ok(CommandTag::new("ALTER CLUSTER"))
}

async fn create_feature_group(
    engine: &Engine,
    project: &str,
    user: &str,
    create: &CreateFeatureGroup,
) -> SqlResult<CommandTag> {
    let tag = CommandTag::new("CREATE FEATURE GROUP");
    let snapshot = engine.catalog.snapshot();
    let existing: Vec<u32> = snapshot
        .feature_group_versions(project, &create.name)
        .filter_map(|r| r.feature_group().map(|s| s.version))
        .collect();
    if create.if_not_exists && already_exists(create.version, &existing) {
        return Ok(tag);
    }
    let version = version_to_create("feature group", &create.name, create.version, &existing)?;
    if create.primary_key.is_empty() {
        return Err(SqlError::InvalidParameter(format!(
            "feature group \"{}\" needs a PRIMARY KEY",
            create.name
        )));
    }
    let mut columns = convert_columns(&create.name, &create.columns, &create.primary_key)?;
    let event_time = create.event_time.clone();
    if let Some(event_time) = &event_time {
        let Some(column) = columns.iter_mut().find(|c| &c.name == event_time) else {
            return Err(SqlError::UndefinedColumn(format!(
                "EVENT TIME column \"{event_time}\" of feature group \"{}\" does not exist",
                create.name
            )));
        };
        if !column.data_type.is_orderable_time() {
            return Err(SqlError::DatatypeMismatch(format!(
                "EVENT TIME column \"{event_time}\" is of type {}; it must be a timestamp, date or integer",
                column.data_type.sql_name()
            )));
        }
        // A row without an event time cannot be ordered, so the column is implicitly NOT NULL.
        column.nullable = false;
    }
    for key in &create.primary_key {
        if let Some(column) = columns.iter().find(|c| &c.name == key)
            && !column.data_type.is_key_type()
        {
            return Err(SqlError::DatatypeMismatch(format!(
                "primary key column \"{key}\" is of type {}, which cannot be a key",
                column.data_type.sql_name()
            )));
        }
    }
    let mut options = FeatureGroupOptions::default();
    apply_create_options(&mut options, &create.options)?;
    if let Some(spec) = &options.partition_by {
        Partitioning::parse(spec, event_time.as_deref(), &columns)?;
    }
    let command = CatalogCommand::CreateRelation {
        project: project.to_string(),
        name: create.name.clone(),
        kind: RelationKind::FeatureGroup(FeatureGroupSpec {
            version,
            event_time,
            options,
        }),
        columns,
        primary_key: create.primary_key.clone(),
        owner: user.to_string(),
        created_at: Utc::now(),
    };
    create_relation(engine, command).await?;
    Ok(tag)
}

/// Creates a relation in the catalog, then its offline table; undoes the catalog entry if the
/// table cannot be created.
async fn create_relation(engine: &Engine, command: CatalogCommand) -> SqlResult<()> {
    let Applied::Relation(oid) = engine.change_catalog(command).await? else {
        return Err(SqlError::Internal(
            "creating a relation applied nothing".into(),
        ));
    };
    let snapshot = engine.catalog.snapshot();
    let relation = snapshot
        .relation(oid)
        .ok_or_else(|| SqlError::Internal(format!("relation {oid} vanished after creation")))?;
    let (schema, partition_columns) = stored_schema(relation);
    let created = match engine
        .offline
        .create_table(oid, schema, &partition_columns)
        .await
    {
        Ok(()) if is_online(relation) => crate::online::enable(engine, relation).await,
        other => other.map_err(SqlError::from),
    };
    if let Err(e) = created {
        engine
            .change_catalog(CatalogCommand::DropRelations { oids: vec![oid] })
            .await?;
        remove_storage(engine, std::slice::from_ref(relation)).await?;
        return Err(e);
    }
    Ok(())
}

fn is_online(relation: &Relation) -> bool {
    relation
        .feature_group()
        .is_some_and(|spec| spec.options.online)
}

fn convert_columns(
    relation: &str,
    defs: &[ColumnDef],
    primary_key: &[String],
) -> SqlResult<Vec<Column>> {
    let mut columns = Vec::with_capacity(defs.len());
    for def in defs {
        let name = normalize_ident(&def.name);
        let data_type = column_type(&def.data_type, &name)?;
        let mut nullable = !primary_key.contains(&name);
        let mut description = None;
        for option in &def.options {
            match &option.option {
                ColumnOption::NotNull => nullable = false,
                ColumnOption::Null => {
                    if primary_key.contains(&name) {
                        return Err(SqlError::InvalidParameter(format!(
                            "primary key column \"{name}\" of \"{relation}\" cannot be NULL"
                        )));
                    }
                }
                ColumnOption::PrimaryKey(_) => nullable = false,
                ColumnOption::Comment(text) => description = Some(text.clone()),
                other => {
                    return Err(SqlError::NotSupported(format!(
                        "column \"{name}\" of \"{relation}\": constraint {other} is not supported"
                    )));
                }
            }
        }
        columns.push(Column {
            name,
            data_type,
            nullable,
            description,
        });
    }
    for key in primary_key {
        if !columns.iter().any(|c| &c.name == key) {
            return Err(SqlError::UndefinedColumn(format!(
                "primary key column \"{key}\" of \"{relation}\" does not exist"
            )));
        }
    }
    Ok(columns)
}

fn apply_create_options(
    options: &mut FeatureGroupOptions,
    entries: &[OptionEntry],
) -> SqlResult<()> {
    let patch = options_patch(entries, true)?;
    options.apply(&patch);
    for OptionEntry { key, value } in entries {
        if key == "partition_by" {
            match value {
                OptionValue::String(spec) => {
                    options.partition_by = Some(spec.trim().to_lowercase())
                }
                other => {
                    return Err(SqlError::InvalidParameter(format!(
                        "partition_by must be a string such as 'day(ts)', found {other}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Reads `WITH (...)` / `SET (...)` entries into a patch, rejecting unknown keys and bad values.
fn options_patch(entries: &[OptionEntry], creating: bool) -> SqlResult<FeatureGroupOptionsPatch> {
    let mut patch = FeatureGroupOptionsPatch::default();
    for OptionEntry { key, value } in entries {
        match key.as_str() {
            "online" => {
                patch.online = Some(boolean_option(key, value)?);
            }
            "ttl" => {
                patch.ttl_seconds = Some(match value {
                    OptionValue::Null => None,
                    OptionValue::String(text) => Some(parse_duration(text)?),
                    OptionValue::Number(n) => Some(parse_duration(n)?),
                    other => {
                        return Err(SqlError::InvalidParameter(format!(
                            "ttl must be an interval such as '30 days', found {other}"
                        )));
                    }
                })
            }
            "description" => {
                patch.description = Some(match value {
                    OptionValue::Null => None,
                    OptionValue::String(s) => Some(s.clone()),
                    other => {
                        return Err(SqlError::InvalidParameter(format!(
                            "description must be a string, found {other}"
                        )));
                    }
                })
            }
            "tags" => {
                patch.tags = Some(match value {
                    OptionValue::Null => Vec::new(),
                    OptionValue::String(s) => s
                        .split(',')
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect(),
                    other => {
                        return Err(SqlError::InvalidParameter(format!(
                            "tags must be a comma-separated string, found {other}"
                        )));
                    }
                })
            }
            "partition_by" if creating => {}
            other => {
                return Err(SqlError::InvalidParameter(format!(
                    "unrecognized feature group option \"{other}\"; options are online, ttl, description, tags{}",
                    if creating { ", partition_by" } else { "" }
                )));
            }
        }
    }
    Ok(patch)
}

fn boolean_option(key: &str, value: &OptionValue) -> SqlResult<bool> {
    match value {
        OptionValue::Boolean(b) => Ok(*b),
        OptionValue::String(s) if matches!(s.to_lowercase().as_str(), "true" | "on" | "yes") => {
            Ok(true)
        }
        OptionValue::String(s) if matches!(s.to_lowercase().as_str(), "false" | "off" | "no") => {
            Ok(false)
        }
        other => Err(SqlError::InvalidParameter(format!(
            "{key} must be true or false, found {other}"
        ))),
    }
}

/// Parses a PostgreSQL-style interval of whole units (`'30 days'`, `'1 day 12 hours'`, `'90'`
/// seconds) into seconds.
pub fn parse_duration(text: &str) -> SqlResult<i64> {
    let invalid = || {
        SqlError::InvalidText(format!(
            "invalid input syntax for type interval: \"{text}\" (write e.g. '30 days' or '12 hours')"
        ))
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() == 1 {
        return words[0]
            .parse::<i64>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(invalid);
    }
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let mut total: i64 = 0;
    for pair in words.chunks(2) {
        let amount: i64 = pair[0].parse().map_err(|_| invalid())?;
        let unit = match pair[1].to_lowercase().trim_end_matches('s') {
            "second" | "sec" => 1,
            "minute" | "min" => 60,
            "hour" => 3_600,
            "day" => 86_400,
            "week" => 604_800,
            _ => return Err(invalid()),
        };
        total = amount
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(invalid)?;
    }
    if total <= 0 {
        return Err(invalid());
    }
    Ok(total)
}

async fn alter_feature_group(
    engine: &Engine,
    project: &str,
    name: &str,
    version: Option<u32>,
    action: &AlterFeatureGroupAction,
) -> SqlResult<CommandTag> {
    let snapshot = engine.catalog.snapshot();
    let group = snapshot.feature_group(project, name, version)?;
    let version = group.feature_group().map(|s| s.version).unwrap_or(1);
    match action {
        AlterFeatureGroupAction::Set(entries) => {
            let patch = options_patch(entries, false)?;
            let was_online = is_online(group);
            // Online on: the online table is filled before the catalog says so; a crash in
            // between leaves online data the next start drops. Online off: the catalog first,
            // then the data; a crash in between leaves data the next start drops.
            if patch.online == Some(true) && !was_online {
                crate::online::enable(engine, group).await?;
            }
            engine
                .change_catalog(CatalogCommand::AlterFeatureGroup {
                    project: project.to_string(),
                    name: name.to_string(),
                    version,
                    patch: patch.clone(),
                })
                .await?;
            if patch.online == Some(false) && was_online {
                crate::online::disable(engine, group).await?;
            }
        }
        AlterFeatureGroupAction::AddColumn(definition) => {
            let mut columns = convert_columns(name, std::slice::from_ref(definition), &[])?;
            let column = columns.remove(0);
            if !column.nullable {
                return Err(SqlError::NotSupported(format!(
                    "column \"{}\": an added column must be nullable, since rows written before it have no value",
                    column.name
                )));
            }
            if group.column(&column.name).is_some() {
                return Err(SqlError::Duplicate(format!(
                    "column \"{}\" of feature group \"{name}\" version {version} already exists",
                    column.name
                )));
            }
            // Storage first: a crash before the catalog change leaves an extra column that scans
            // never read (they project the catalog's columns) and a retry accepts.
            let field = datafusion::arrow::datatypes::Field::new(
                &column.name,
                crate::types::arrow_type(&column.data_type),
                true,
            );
            engine.offline.add_column(group.oid, field).await?;
            engine
                .change_catalog(CatalogCommand::AddColumn {
                    project: project.to_string(),
                    name: name.to_string(),
                    version,
                    column,
                })
                .await?;
        }
    }
    Ok(CommandTag::new("ALTER FEATURE GROUP"))
}

async fn drop_feature_group(
    engine: &Engine,
    project: &str,
    name: &str,
    version: Option<u32>,
    if_exists: bool,
) -> SqlResult<CommandTag> {
    let tag = CommandTag::new("DROP FEATURE GROUP");
    let snapshot = engine.catalog.snapshot();
    let oids = oids_to_drop(
        "feature group",
        name,
        version.map(|v| snapshot.feature_group(project, name, Some(v))),
        || {
            snapshot
                .feature_group_versions(project, name)
                .map(|r| r.oid)
                .collect()
        },
        |group| group.oid,
        if_exists,
    )?;
    if oids.is_empty() {
        return Ok(tag);
    }
    drop_relations(engine, oids).await?;
    Ok(tag)
}

async fn drop_relations(engine: &Engine, oids: Vec<u32>) -> SqlResult<()> {
    if let Applied::Dropped(relations) = engine
        .change_catalog(CatalogCommand::DropRelations { oids })
        .await?
    {
        remove_storage(engine, &relations).await?;
    }
    Ok(())
}

async fn remove_storage(engine: &Engine, relations: &[Relation]) -> SqlResult<()> {
    for relation in relations {
        engine.offline.drop_table(relation.oid).await?;
        crate::online::disable(engine, relation).await?;
    }
    Ok(())
}

/// `CREATE TABLE`: a plain table in the offline store.
pub async fn create_table(
    engine: &Engine,
    project: &str,
    user: &str,
    create: &ast::CreateTable,
) -> SqlResult<CommandTag> {
    let name = object_name_to_string(&create.name);
    if create.query.is_some() {
        return Err(SqlError::NotSupported(
            "CREATE TABLE ... AS is not supported yet; CREATE TABLE, then INSERT ... SELECT".into(),
        ));
    }
    if create.temporary || create.external {
        return Err(SqlError::NotSupported(format!(
            "{} tables are not supported",
            if create.temporary {
                "temporary"
            } else {
                "external"
            }
        )));
    }
    if create.if_not_exists && engine.catalog.snapshot().resolve(project, &name).is_some() {
        return Ok(CommandTag::new("CREATE TABLE"));
    }
    let mut primary_key: Vec<String> = create
        .columns
        .iter()
        .filter(|c| column_is_inline_primary_key(c))
        .map(|c| normalize_ident(&c.name))
        .collect();
    for constraint in &create.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) if primary_key.is_empty() => {
                for column in &pk.columns {
                    match &column.column.expr {
                        ast::Expr::Identifier(ident) => primary_key.push(normalize_ident(ident)),
                        other => {
                            return Err(SqlError::NotSupported(format!(
                                "primary key of \"{name}\" must list columns, found {other}"
                            )));
                        }
                    }
                }
            }
            TableConstraint::PrimaryKey(_) => {
                return Err(SqlError::InvalidParameter(format!(
                    "multiple primary keys for table \"{name}\" are not allowed"
                )));
            }
            other => {
                return Err(SqlError::NotSupported(format!(
                    "table \"{name}\": constraint {other} is not supported"
                )));
            }
        }
    }
    if create.columns.is_empty() {
        return Err(SqlError::InvalidParameter(format!(
            "table \"{name}\" needs at least one column"
        )));
    }
    let columns = convert_columns(&name, &create.columns, &primary_key)?;
    create_relation(
        engine,
        CatalogCommand::CreateRelation {
            project: project.to_string(),
            name,
            kind: RelationKind::Table,
            columns,
            primary_key,
            owner: user.to_string(),
            created_at: Utc::now(),
        },
    )
    .await?;
    Ok(CommandTag::new("CREATE TABLE"))
}

/// `DROP TABLE` (plain tables only; feature groups have `DROP FEATURE GROUP`).
pub async fn drop_objects(
    engine: &Engine,
    project: &str,
    object_type: ast::ObjectType,
    if_exists: bool,
    names: &[ObjectName],
    _cascade: bool,
) -> SqlResult<CommandTag> {
    if object_type != ast::ObjectType::Table {
        return Err(SqlError::NotSupported(format!(
            "DROP {object_type} is not supported"
        )));
    }
    let snapshot = engine.catalog.snapshot();
    let mut oids = Vec::new();
    for name in names {
        let name = object_name_to_string(name);
        match snapshot.resolve(project, &name) {
            Some(relation) if relation.feature_group().is_some() => {
                return Err(SqlError::DatatypeMismatch(format!(
                    "\"{name}\" is a feature group; use DROP FEATURE GROUP {}",
                    relation.name
                )));
            }
            Some(relation) => oids.push(relation.oid),
            None if if_exists => {}
            None => {
                return Err(SqlError::UndefinedTable(format!(
                    "table \"{name}\" does not exist"
                )));
            }
        }
    }
    if !oids.is_empty() {
        drop_relations(engine, oids).await?;
    }
    Ok(CommandTag::new("DROP TABLE"))
}

async fn create_project(
    engine: &Engine,
    user: &str,
    name: &str,
    options: &[OptionEntry],
    if_not_exists: bool,
) -> SqlResult<CommandTag> {
    let tag = CommandTag::new("CREATE PROJECT");
    if if_not_exists && engine.catalog.snapshot().project(name).is_some() {
        return Ok(tag);
    }
    let mut description = None;
    for OptionEntry { key, value } in options {
        match (key.as_str(), value) {
            ("description", OptionValue::String(text)) => description = Some(text.clone()),
            ("description", other) => {
                return Err(SqlError::InvalidParameter(format!(
                    "description must be a string, found {other}"
                )));
            }
            (other, _) => {
                return Err(SqlError::InvalidParameter(format!(
                    "unrecognized project option \"{other}\"; the option is description"
                )));
            }
        }
    }
    engine
        .change_catalog(CatalogCommand::CreateProject {
            name: name.to_string(),
            description,
            owner: user.to_string(),
            created_at: Utc::now(),
        })
        .await?;
    Ok(tag)
}

async fn drop_project(
    engine: &Engine,
    current_project: &str,
    name: &str,
    if_exists: bool,
    cascade: bool,
) -> SqlResult<CommandTag> {
    let tag = CommandTag::new("DROP PROJECT");
    if engine.catalog.snapshot().project(name).is_none() {
        if if_exists {
            return Ok(tag);
        }
        return Err(SqlError::UndefinedProject(format!(
            "project \"{name}\" does not exist"
        )));
    }
    if name == current_project {
        return Err(SqlError::ObjectInUse(format!(
            "cannot drop the currently open project \"{name}\"; connect to another project first"
        )));
    }
    let models: Vec<_> = engine.catalog.snapshot().models(name).cloned().collect();
    let applied = engine
        .change_catalog(CatalogCommand::DropProject {
            name: name.to_string(),
            cascade,
        })
        .await?;
    if let Applied::Dropped(relations) = applied {
        remove_storage(engine, &relations).await?;
        crate::models::remove_artifacts(engine, &models).await?;
    }
    Ok(tag)
}

/// The SQL over the discovery tables that a listing statement stands for.
pub fn listing_query(statement: &Statement, engine: &Engine, project: &str) -> SqlResult<String> {
    Ok(match statement {
        Statement::ShowFeatureGroups => {
            "SELECT name, version, online, primary_key, event_time, description, \
             offline_rows FROM quiver.feature_groups ORDER BY name, version"
                .to_string()
        }
        Statement::ShowProjects => {
            "SELECT name, description, owner FROM quiver.projects ORDER BY name".to_string()
        }
        Statement::DescribeFeatureGroup { name, version } => {
            let snapshot = engine.catalog.snapshot();
            let group = snapshot.feature_group(project, name, *version)?;
            let version = group.feature_group().map(|s| s.version).unwrap_or(1);
            format!(
                "SELECT name AS column_name, type, nullable, primary_key, event_time, description \
                 FROM quiver.features WHERE feature_group = {} AND version = {version} ORDER BY position",
                quote_literal(name)
            )
        }
        Statement::ShowFeatureViews => {
            "SELECT name, version, label, transforms, description, columns \
             FROM quiver.feature_views ORDER BY name, version"
                .to_string()
        }
        Statement::DescribeFeatureView { name, version } => {
            let snapshot = engine.catalog.snapshot();
            let view = snapshot.feature_view(project, name, *version)?;
            format!(
                "SELECT name AS column_name, type, label, transform \
                 FROM quiver.feature_view_columns WHERE feature_view = {} AND version = {} \
                 ORDER BY position",
                quote_literal(name),
                view.version
            )
        }
        Statement::ShowTrainingDatasets => {
            "SELECT name, version, feature_view, feature_view_version, format, split, seed, \
             split_rows, location FROM quiver.training_datasets ORDER BY name, version"
                .to_string()
        }
        Statement::DescribeTrainingDataset { name, version } => {
            let snapshot = engine.catalog.snapshot();
            let dataset = snapshot.training_dataset(project, name, *version)?;
            format!(
                "SELECT name, version, feature_view, feature_view_version, format, location, \
                 split, seed, rows, split_rows, label, columns, transformed, query, owner, \
                 created_at FROM quiver.training_datasets WHERE name = {} AND version = {}",
                quote_literal(name),
                dataset.version
            )
        }
        other => return Err(SqlError::Internal(format!("not a listing: {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_whole_units() {
        assert_eq!(parse_duration("30 days").unwrap(), 30 * 86_400);
        assert_eq!(
            parse_duration("1 day 12 hours").unwrap(),
            86_400 + 12 * 3_600
        );
        assert_eq!(parse_duration("90").unwrap(), 90);
        for bad in ["", "days", "3 fortnights", "-1 day", "1 day 2", "0"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
