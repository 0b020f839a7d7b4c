//! What `pg_catalog` lists for a project, built from the Quiver catalog: namespaces, relations
//! with their columns, primary-key indexes and comments, databases (projects) and roles (users).
//!
//! OIDs are stable: a catalog object keeps its catalog OID in every session and after restarts,
//! so a client may cache them. One catalog object is several PostgreSQL relations (a feature
//! group version is `public.g_2`, also `public.g` while it is the latest version, `online.g_2`
//! and `online.g` when online, and each has a primary-key index), so the relation's OID carries
//! which of them it is in bits 28..31 ([`Facet`]) above the catalog OID. Catalog OIDs stay below
//! 2^28 (268 million objects), which keeps every OID a positive `int4` as pg_catalog's columns are.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::OnceLock;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::SchemaProvider;
use datafusion::catalog::information_schema::{
    INFORMATION_SCHEMA_TABLES, InformationSchemaProvider,
};

use quiver_catalog::{CatalogState, ColumnType, Oid, Relation};

use super::tables::Sources;
use crate::discovery;
use crate::error::SqlResult;
use crate::online::ONLINE_SCHEMA;
use crate::project_catalog::{DISCOVERY_SCHEMA, PUBLIC_SCHEMA, SYSTEM_SCHEMA};

/// PostgreSQL's own namespace OIDs, which clients sometimes hard-code.
pub(crate) const PG_CATALOG_NAMESPACE: i32 = 11;
pub(crate) const PUBLIC_NAMESPACE: i32 = 2200;
/// The OID PostgreSQL 15 gives `information_schema`; the static `pg_type` and `pg_proc` rows of
/// its types and functions already name it.
pub(crate) const INFORMATION_SCHEMA_NAMESPACE: i32 = 13283;
/// Quiver's own namespaces and the relations of `quiver` and `information_schema` get OIDs in
/// the system range, above the static tables' OIDs and below the catalog's first OID.
pub(crate) const ONLINE_NAMESPACE: i32 = 14001;
pub(crate) const DISCOVERY_NAMESPACE: i32 = 14002;
const DISCOVERY_RELATIONS: i32 = 14100;
const INFORMATION_SCHEMA_RELATIONS: i32 = 14200;
const PG_CATALOG_RELATIONS: i32 = 14300;
/// The OIDs PostgreSQL gives its main catalogs, which clients compare `classoid`s with
/// (`'pg_catalog.pg_class'::regclass`); the other `pg_catalog` tables get system-range OIDs.
const PG_CATALOG_OIDS: &[(&str, i32)] = &[
    ("pg_type", 1247),
    ("pg_attribute", 1249),
    ("pg_proc", 1255),
    ("pg_class", PG_CLASS_OID),
    ("pg_authid", 1260),
    ("pg_auth_members", 1261),
    ("pg_database", 1262),
    ("pg_tablespace", 1213),
    ("pg_am", 2601),
    ("pg_attrdef", 2604),
    ("pg_cast", 2605),
    ("pg_constraint", 2606),
    ("pg_depend", 2608),
    ("pg_description", 2609),
    ("pg_index", 2610),
    ("pg_inherits", 2611),
    ("pg_language", 2612),
    ("pg_namespace", 2615),
    ("pg_operator", 2617),
    ("pg_rewrite", 2618),
    ("pg_trigger", 2620),
    ("pg_extension", 3079),
    ("pg_collation", 3456),
    ("pg_enum", 3501),
];
/// PostgreSQL's bootstrap superuser OID: the owner of what no user created when the catalog
/// has no superuser to name.
pub(crate) const BOOTSTRAP_SUPERUSER: i32 = 10;
/// `pg_class`'s own OID, the `classoid` of relation comments in `pg_description`.
pub(crate) const PG_CLASS_OID: i32 = 1259;
/// The btree access method, `pg_am.oid`, that primary-key indexes report.
pub(crate) const BTREE_AM: i32 = 403;

/// PostgreSQL's page size, the unit of `relpages`.
pub(crate) const PAGE_BYTES: u64 = 8192;

const FACET_SHIFT: u32 = 28;
const CATALOG_OID_MASK: i32 = (1 << FACET_SHIFT) - 1;

/// Which PostgreSQL relation of a catalog object an OID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Facet {
    /// `public.<name>_<version>`, a plain table's `public.<name>`, a feature view version.
    Versioned = 0,
    /// `public.<name>`: the latest version of a feature group or feature view.
    Latest = 1,
    /// `online.<name>_<version>`.
    Online = 2,
    /// `online.<name>`.
    OnlineLatest = 3,
    /// The primary-key index (and constraint) of the relation with the facet 4 less.
    VersionedKey = 4,
    LatestKey = 5,
    OnlineKey = 6,
    OnlineLatestKey = 7,
}

impl Facet {
    const ALL: [Facet; 8] = [
        Facet::Versioned,
        Facet::Latest,
        Facet::Online,
        Facet::OnlineLatest,
        Facet::VersionedKey,
        Facet::LatestKey,
        Facet::OnlineKey,
        Facet::OnlineLatestKey,
    ];

    /// The OID of this facet of a catalog object.
    pub(crate) fn oid(self, object: Oid) -> i32 {
        // Catalog OIDs stay below 2^28 (module docs), so this neither overflows nor goes negative.
        ((self as i32) << FACET_SHIFT) | (object as i32 & CATALOG_OID_MASK)
    }

    /// The catalog object and facet an OID names, if it is a catalog object's OID.
    pub(crate) fn split(oid: i32) -> Option<(Oid, Facet)> {
        if oid < quiver_catalog::FIRST_USER_OID as i32 {
            return None;
        }
        let facet = Facet::ALL[(oid >> FACET_SHIFT) as usize & 7];
        Some(((oid & CATALOG_OID_MASK) as Oid, facet))
    }

    /// The facet of the primary-key index of this relation facet.
    fn key(self) -> Facet {
        Facet::ALL[(self as usize) | 4]
    }

    pub(crate) fn is_key(self) -> bool {
        (self as usize) & 4 != 0
    }

    pub(crate) fn namespace(self) -> i32 {
        if (self as usize) & 2 != 0 {
            ONLINE_NAMESPACE
        } else {
            PUBLIC_NAMESPACE
        }
    }
}

/// Whether a listing reads the relations' sizes from the offline store (only `pg_class` shows
/// them, in `relpages`; the other tables need not wait for the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sizes {
    Read,
    Skip,
}

/// A namespace (schema) of the project.
#[derive(Debug, Clone)]
pub(crate) struct PgNamespace {
    pub oid: i32,
    pub name: &'static str,
}

/// The namespaces every project has.
pub(crate) fn namespaces() -> [PgNamespace; 5] {
    [
        PgNamespace {
            oid: PG_CATALOG_NAMESPACE,
            name: SYSTEM_SCHEMA,
        },
        PgNamespace {
            oid: PUBLIC_NAMESPACE,
            name: PUBLIC_SCHEMA,
        },
        PgNamespace {
            oid: INFORMATION_SCHEMA_NAMESPACE,
            name: "information_schema",
        },
        PgNamespace {
            oid: ONLINE_NAMESPACE,
            name: ONLINE_SCHEMA,
        },
        PgNamespace {
            oid: DISCOVERY_NAMESPACE,
            name: DISCOVERY_SCHEMA,
        },
    ]
}

/// The namespace of the relation with this OID, if it is one `pg_class` lists.
pub(crate) fn relation_namespace(oid: i32) -> Option<i32> {
    if let Some((_, facet)) = Facet::split(oid) {
        return Some(facet.namespace());
    }
    match oid {
        DISCOVERY_RELATIONS..INFORMATION_SCHEMA_RELATIONS => Some(DISCOVERY_NAMESPACE),
        INFORMATION_SCHEMA_RELATIONS..PG_CATALOG_RELATIONS => Some(INFORMATION_SCHEMA_NAMESPACE),
        PG_CATALOG_RELATIONS..FIRST_USER_OID => Some(PG_CATALOG_NAMESPACE),
        _ if PG_CATALOG_OIDS.iter().any(|(_, known)| *known == oid) => Some(PG_CATALOG_NAMESPACE),
        _ => None,
    }
}

const FIRST_USER_OID: i32 = quiver_catalog::FIRST_USER_OID as i32;

/// Whether unqualified names find relations of this namespace: PostgreSQL's search path, which
/// is `public` (and the always-searched `pg_catalog`) in Quiver.
pub(crate) fn namespace_is_visible(namespace: i32) -> bool {
    namespace == PUBLIC_NAMESPACE || namespace == PG_CATALOG_NAMESPACE
}

/// What `pg_class.relkind` says a relation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelKind {
    Table,
    View,
    Index,
}

impl RelKind {
    pub(crate) fn code(self) -> &'static str {
        match self {
            RelKind::Table => "r",
            RelKind::View => "v",
            RelKind::Index => "i",
        }
    }
}

/// A column as `pg_attribute` shows it.
#[derive(Debug, Clone)]
pub(crate) struct PgColumn {
    pub name: String,
    pub type_oid: i32,
    /// `atttypmod`: -1, or a varchar's length limit plus 4 as PostgreSQL stores it.
    pub type_modifier: i32,
    pub not_null: bool,
    pub description: Option<String>,
}

/// A relation as `pg_class` shows it.
#[derive(Debug, Clone)]
pub(crate) struct PgRelation {
    pub oid: i32,
    pub name: String,
    pub namespace: i32,
    pub kind: RelKind,
    pub owner: i32,
    pub columns: Vec<PgColumn>,
    pub description: Option<String>,
    /// For a table with a primary key, its index; for an index, what it indexes.
    pub index: Option<PgIndex>,
    /// Rows the catalog knows of, for `reltuples` (planner statistics in PostgreSQL).
    pub tuples: f64,
    /// The size in 8 kB pages (`relpages`): the offline files of a feature group version or
    /// table, 0 for what has no files (views, indexes, online and system relations).
    pub pages: i32,
}

/// A primary-key index (and its constraint, which shares the OID).
#[derive(Debug, Clone)]
pub(crate) struct PgIndex {
    pub oid: i32,
    pub name: String,
    pub table: i32,
    /// The key columns' attribute numbers in the table, in key order.
    pub key: Vec<i16>,
}

/// Lists the project's relations: its feature groups, tables and feature views from the
/// Quiver catalog, and the system relations of `quiver` and `information_schema` (whose
/// columns DataFusion describes from the session's `catalogs`).
pub(crate) async fn relations(sources: &Sources<'_>, sizes: Sizes) -> SqlResult<Vec<PgRelation>> {
    let Sources {
        engine,
        project,
        catalogs,
        system_tables,
        ..
    } = sources;
    let snapshot = engine.catalog.snapshot();
    let mut relations = Vec::new();
    for relation in snapshot.relations(project) {
        // A size that cannot be read (the store unreachable) lists the relation with no pages
        // rather than failing every catalog query.
        let bytes = match sizes {
            Sizes::Read => StoreBytes {
                offline: engine.offline.byte_size(relation.oid).await.unwrap_or(0),
                online: engine.online.byte_size(relation.oid).await.unwrap_or(0),
            },
            Sizes::Skip => StoreBytes::default(),
        };
        push_relation(&snapshot, relation, bytes, &mut relations);
    }
    for view in snapshot.feature_views(project) {
        let latest = snapshot
            .resolve_feature_view(project, &view.name)
            .is_some_and(|latest| latest.oid == view.oid);
        let columns: Vec<PgColumn> = view
            .columns
            .iter()
            .map(|column| PgColumn {
                name: column.name.clone(),
                type_oid: type_oid_by_name(&column.type_name),
                type_modifier: -1,
                not_null: false,
                description: None,
            })
            .collect();
        let mut facets = vec![(Facet::Versioned, view.qualified_name())];
        if latest {
            facets.push((Facet::Latest, view.name.clone()));
        }
        for (facet, name) in facets {
            relations.push(PgRelation {
                oid: facet.oid(view.oid),
                name,
                namespace: PUBLIC_NAMESPACE,
                kind: RelKind::View,
                owner: user_oid(&snapshot, &view.owner),
                columns: columns.clone(),
                description: view.description.clone(),
                index: None,
                tuples: -1.0,
                pages: 0,
            });
        }
    }
    for (position, name) in discovery::TABLES.iter().enumerate() {
        if let Some(schema) = discovery::schema(name)? {
            relations.push(system_relation(
                DISCOVERY_RELATIONS + position as i32,
                name,
                DISCOVERY_NAMESPACE,
                RelKind::Table,
                &schema,
                system_owner(&snapshot),
            ));
        }
    }
    for (position, (name, schema)) in system_tables.iter().enumerate() {
        let oid = PG_CATALOG_OIDS
            .iter()
            .find(|(known, _)| known == name)
            .map_or(PG_CATALOG_RELATIONS + position as i32, |(_, oid)| *oid);
        relations.push(system_relation(
            oid,
            name,
            PG_CATALOG_NAMESPACE,
            RelKind::Table,
            schema,
            system_owner(&snapshot),
        ));
    }
    let information_schema = InformationSchemaProvider::new((*catalogs).clone());
    for (position, name) in INFORMATION_SCHEMA_TABLES.iter().enumerate() {
        if let Some(table) = information_schema.table(name).await? {
            relations.push(system_relation(
                INFORMATION_SCHEMA_RELATIONS + position as i32,
                name,
                INFORMATION_SCHEMA_NAMESPACE,
                RelKind::View,
                &table.schema(),
                system_owner(&snapshot),
            ));
        }
    }
    Ok(relations)
}

/// A relation of `quiver` or `information_schema`, whose columns DataFusion describes.
fn system_relation(
    oid: i32,
    name: &str,
    namespace: i32,
    kind: RelKind,
    schema: &SchemaRef,
    owner: i32,
) -> PgRelation {
    let columns = schema
        .fields()
        .iter()
        .map(|field| PgColumn {
            name: field.name().clone(),
            type_oid: arrow_type_oid(field.data_type()),
            type_modifier: -1,
            not_null: !field.is_nullable(),
            description: None,
        })
        .collect();
    PgRelation {
        oid,
        name: name.to_string(),
        namespace,
        kind,
        owner,
        columns,
        description: None,
        index: None,
        tuples: -1.0,
        pages: 0,
    }
}

/// What a relation's data takes in each store.
#[derive(Debug, Default, Clone, Copy)]
struct StoreBytes {
    offline: u64,
    online: u64,
}

/// Bytes in whole pages, as `relpages` counts them.
fn pages(bytes: u64) -> i32 {
    i32::try_from(bytes.div_ceil(PAGE_BYTES)).unwrap_or(i32::MAX)
}

/// The relations one feature group version or table is: its names in `public` and `online`,
/// each with its primary-key index.
fn push_relation(
    snapshot: &CatalogState,
    relation: &Relation,
    bytes: StoreBytes,
    out: &mut Vec<PgRelation>,
) {
    let mut facets = vec![(Facet::Versioned, relation.qualified_name())];
    let mut description = None;
    if let Some(spec) = relation.feature_group() {
        let latest = snapshot
            .resolve(&relation.project, &relation.name)
            .is_some_and(|latest| latest.oid == relation.oid);
        if latest {
            facets.push((Facet::Latest, relation.name.clone()));
        }
        if spec.options.online {
            facets.push((Facet::Online, relation.qualified_name()));
            if latest {
                facets.push((Facet::OnlineLatest, relation.name.clone()));
            }
        }
        description = spec.options.description.clone();
    }
    let columns: Vec<PgColumn> = relation
        .columns
        .iter()
        .map(|column| {
            let (type_oid, type_modifier) = column_type_oid(&column.data_type);
            PgColumn {
                name: column.name.clone(),
                type_oid,
                type_modifier,
                not_null: !column.nullable || relation.primary_key.contains(&column.name),
                description: column.description.clone(),
            }
        })
        .collect();
    let key: Vec<i16> = relation
        .primary_key
        .iter()
        .filter_map(|name| {
            relation
                .columns
                .iter()
                .position(|column| &column.name == name)
                .map(|position| position as i16 + 1)
        })
        .collect();
    let owner = user_oid(snapshot, &relation.owner);
    for (facet, name) in facets {
        let oid = facet.oid(relation.oid);
        let index = (!key.is_empty()).then(|| PgIndex {
            oid: facet.key().oid(relation.oid),
            name: format!("{name}_pkey"),
            table: oid,
            key: key.clone(),
        });
        if let Some(index) = &index {
            out.push(PgRelation {
                oid: index.oid,
                name: index.name.clone(),
                namespace: facet.namespace(),
                kind: RelKind::Index,
                owner,
                columns: index
                    .key
                    .iter()
                    .filter_map(|attnum| columns.get(*attnum as usize - 1).cloned())
                    .collect(),
                description: None,
                index: Some(index.clone()),
                tuples: -1.0,
                pages: 0,
            });
        }
        out.push(PgRelation {
            oid,
            name,
            namespace: facet.namespace(),
            kind: RelKind::Table,
            owner,
            columns: columns.clone(),
            description: description.clone(),
            index,
            tuples: -1.0,
            pages: if facet.namespace() == PUBLIC_NAMESPACE {
                pages(bytes.offline)
            } else {
                pages(bytes.online)
            },
        });
    }
}

/// The OID of the user with this name (the system owner's for an unknown name).
pub(crate) fn user_oid(snapshot: &CatalogState, name: &str) -> i32 {
    snapshot
        .user(name)
        .map_or_else(|| system_owner(snapshot), |user| user.oid as i32)
}

/// The owner of what no user created (namespaces, system relations): the first superuser, the
/// `quiver` user of a fresh data directory.
pub(crate) fn system_owner(snapshot: &CatalogState) -> i32 {
    snapshot
        .users()
        .filter(|user| user.superuser)
        .map(|user| user.oid as i32)
        .min()
        .unwrap_or(BOOTSTRAP_SUPERUSER)
}

/// The PostgreSQL type OID and type modifier of a catalog column type.
fn column_type_oid(column_type: &ColumnType) -> (i32, i32) {
    match column_type {
        ColumnType::Varchar(limit) => (
            postgres_types::Type::VARCHAR.oid() as i32,
            limit.map_or(-1, |limit| limit as i32 + 4),
        ),
        other => (arrow_type_oid(&crate::types::arrow_type(other)), -1),
    }
}

/// The OID of the PostgreSQL type a value of this Arrow type has on the wire.
fn arrow_type_oid(data_type: &DataType) -> i32 {
    arrow_pg::datatypes::into_pg_type(data_type)
        .map_or(postgres_types::Type::TEXT.oid(), |t| t.oid()) as i32
}

/// The OID of a built-in PostgreSQL type by its name (feature views store their columns' type
/// names); `text` for a name that is not one.
fn type_oid_by_name(name: &str) -> i32 {
    builtin_type_oid(name).unwrap_or(postgres_types::Type::TEXT.oid() as i32)
}

/// The SQL standard's names of the built-in types whose internal names differ, as
/// `format_type` and `information_schema` spell them.
const SQL_SPELLINGS: &[(&str, &str)] = &[
    ("smallint", "int2"),
    ("integer", "int4"),
    ("bigint", "int8"),
    ("real", "float4"),
    ("double precision", "float8"),
    ("boolean", "bool"),
    ("character varying", "varchar"),
    ("character", "bpchar"),
    ("timestamp without time zone", "timestamp"),
    ("timestamp with time zone", "timestamptz"),
    ("time without time zone", "time"),
    ("time with time zone", "timetz"),
];

/// A built-in type's SQL name from its internal one (`int8` is `bigint`); other names as they
/// are.
pub(crate) fn sql_type_name(internal: &str) -> &str {
    SQL_SPELLINGS
        .iter()
        .find(|(_, name)| *name == internal)
        .map_or(internal, |(spelled, _)| spelled)
}

/// The OID of a built-in type named as `to_regtype` accepts it: its internal name (`int4`,
/// `_float8`), its SQL spelling (`integer`, `double precision`, `text[]`), optionally qualified
/// with `pg_catalog.`.
pub(crate) fn builtin_type_oid(name: &str) -> Option<i32> {
    static BY_NAME: OnceLock<HashMap<String, u32>> = OnceLock::new();
    let by_name = BY_NAME.get_or_init(|| {
        // Built-in type OIDs are below FirstGenbkiObjectId (10000).
        (1..10_000)
            .filter_map(postgres_types::Type::from_oid)
            .map(|t| (t.name().to_string(), t.oid()))
            .collect()
    });
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    let (element, array) = match name.strip_suffix("[]") {
        Some(element) => (element.trim(), true),
        None => (name, false),
    };
    let element = match element {
        "int" => "int4",
        "char" => "bpchar",
        "decimal" => "numeric",
        other => SQL_SPELLINGS
            .iter()
            .find(|(spelled, _)| *spelled == other)
            .map_or(other, |(_, internal)| internal),
    };
    let internal = if array {
        format!("_{element}")
    } else {
        element.to_string()
    };
    by_name.get(&internal).map(|oid| *oid as i32)
}

/// The PostgreSQL types of the parameters a statement casts to an OID alias type (`$1::oid`,
/// `$1::oid[]`; the compatibility parser has made `$2::regclass` a lookup by name). Their values are plain integers to the planner, so the Arrow
/// mapping would describe them as `int4`; PostgreSQL describes the cast's type, and drivers
/// encode by it (asyncpg can send a list of integers as `oid[]`, not as `int4[]`).
pub(crate) fn declared_parameter_types(
    statement: &datafusion::sql::sqlparser::ast::Statement,
) -> Vec<(usize, postgres_types::Type)> {
    use datafusion::sql::sqlparser::ast::{self, ArrayElemTypeDef};
    let alias_name = |data_type: &ast::DataType| match data_type {
        ast::DataType::Custom(name, modifiers) if modifiers.is_empty() => name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .map(|ident| ident.value.to_ascii_lowercase())
            .filter(|name| arrow_pg::datatypes::pg_type_for_alias_kind(name).is_some()),
        _ => None,
    };
    let mut declared = Vec::new();
    let _ = ast::visit_expressions(statement, |expr| {
        if let ast::Expr::Cast {
            expr, data_type, ..
        } = expr
            && let ast::Expr::Value(value) = expr.as_ref()
            && let ast::Value::Placeholder(placeholder) = &value.value
            && let Some(index) = placeholder
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
            && let Some(spelled) = match data_type {
                ast::DataType::Array(
                    ArrayElemTypeDef::SquareBracket(element, _)
                    | ArrayElemTypeDef::AngleBracket(element),
                ) => alias_name(element).map(|name| format!("{name}[]")),
                other => alias_name(other),
            }
            && let Some(pg_type) = builtin_type_oid(&spelled)
                .and_then(|oid| postgres_types::Type::from_oid(oid as u32))
        {
            declared.push((index, pg_type));
        }
        ControlFlow::<()>::Continue(())
    });
    declared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facets_round_trip_and_keep_oids_positive() {
        for facet in Facet::ALL {
            let oid = facet.oid(16_400);
            assert!(oid > 0);
            assert_eq!(Facet::split(oid), Some((16_400, facet)));
        }
        assert_eq!(Facet::Versioned.oid(16_400), 16_400);
        assert_eq!(Facet::split(2200), None);
        assert_eq!(Facet::Online.key(), Facet::OnlineKey);
        assert_eq!(Facet::OnlineLatestKey.namespace(), ONLINE_NAMESPACE);
        assert_eq!(Facet::LatestKey.namespace(), PUBLIC_NAMESPACE);
    }

    #[test]
    fn type_names_resolve_to_builtin_oids() {
        assert_eq!(type_oid_by_name("float8"), 701);
        assert_eq!(type_oid_by_name("_float8"), 1022);
        assert_eq!(type_oid_by_name("no such type"), 25);
        assert_eq!(builtin_type_oid("double precision"), Some(701));
        assert_eq!(builtin_type_oid("pg_catalog.int4"), Some(23));
        assert_eq!(builtin_type_oid("text[]"), Some(1009));
        assert_eq!(builtin_type_oid("hstore"), None);
    }

    #[test]
    fn parameters_cast_to_oid_types_are_described_as_those() {
        let statement = crate::parser::parse(
            "SELECT $1::oid[], $2::oid, $3::bigint FROM pg_type WHERE oid = any($1::oid[])",
        )
        .unwrap()
        .remove(0);
        let crate::parser::Statement::Sql(statement) = statement else {
            panic!("not SQL");
        };
        let declared = declared_parameter_types(&statement);
        assert!(declared.contains(&(1, postgres_types::Type::OID_ARRAY)));
        assert!(declared.contains(&(2, postgres_types::Type::OID)));
        assert!(!declared.iter().any(|(index, _)| *index == 3));
    }
}
