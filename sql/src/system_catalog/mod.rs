//! PostgreSQL's system catalog for clients: psql's `\d`, drivers' metadata calls, BI tools'
//! introspection. datafusion-pg-catalog provides it: `pg_catalog.pg_class`, `pg_attribute`,
//! `pg_namespace`, ... derived from a session's DataFusion catalogs, static tables such as `pg_type`,
//! and the functions and type names (`format_type`, `regclass`, ...) those clients' queries use.
//!
//! The tables that describe the project's own objects (`pg_class`, `pg_attribute`, `pg_index`,
//! ...) and the functions that read them (`pg_get_indexdef`, ...) are Quiver's ([`tables`],
//! [`functions`]): they come from the Quiver catalog with stable OIDs ([`objects`]), primary-key
//! indexes, owners and comments, which a generic DataFusion catalog does not know.
//!
//! Decoding the static tables takes milliseconds, far more than the rest of a connection's
//! setup, so they and the functions are made once per engine; each session gets its own
//! `pg_catalog` schema over its own project.

mod functions;
mod information_schema;
mod objects;
mod rewrites;
mod signatures;
mod tables;

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::information_schema::INFORMATION_SCHEMA;
use datafusion::catalog::{
    CatalogProviderList, MemoryCatalogProviderList, SchemaProvider, TableProvider,
};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    PG_CATALOG_TABLES, PgCatalogSchemaProvider, PgCatalogStaticTables, create_current_database_udf,
};
use datafusion_pg_catalog::setup_pg_catalog;

use crate::Engine;
use crate::error::{SqlError, SqlResult};
use crate::project_catalog::SYSTEM_SCHEMA;
use crate::settings::SettingsView;

pub(crate) use objects::{builtin_type_oid, declared_parameter_types};
pub(crate) use rewrites::{rewrite_catalog_query, user_keywords_to_calls};

/// The function behind `information_schema._pg_expandarray` (see `rewrites`).
const EXPAND_ARRAY: &str = "_pg_expandarray_records";

/// What every session's `pg_catalog` is made from.
#[derive(Debug)]
pub(crate) struct SystemCatalog {
    static_tables: Arc<PgCatalogStaticTables>,
    /// The columns of every `pg_catalog` table, which `pg_class` lists too.
    system_tables: Arc<Vec<(String, SchemaRef)>>,
    /// DataFusion's default functions and planners plus pg_catalog's functions and type planner.
    template: SessionState,
}

impl SystemCatalog {
    pub(crate) fn new() -> SqlResult<SystemCatalog> {
        let template = SessionContext::new();
        let catalog = template
            .state()
            .config()
            .options()
            .catalog
            .default_catalog
            .clone();
        setup_pg_catalog(&template, &catalog, EmptyContextProvider).map_err(|e| *e)?;
        let static_tables = Arc::new(PgCatalogStaticTables::try_new()?);
        for function in signatures::functions(&static_tables)? {
            template.register_udf(function);
        }
        let no_catalogs: Arc<dyn CatalogProviderList> = Arc::new(MemoryCatalogProviderList::new());
        let generic = PgCatalogSchemaProvider::try_new(
            no_catalogs,
            static_tables.clone(),
            EmptyContextProvider,
        )?;
        let mut system_tables = Vec::new();
        for name in PG_CATALOG_TABLES {
            if let Some(table) = generic.build_table_by_name(name)? {
                system_tables.push((name.to_string(), table.schema()));
            }
        }
        Ok(SystemCatalog {
            static_tables,
            system_tables: Arc::new(system_tables),
            template: template.state(),
        })
    }

    /// A session state builder holding the functions and planners; the caller sets the
    /// configuration, catalogs and runtime.
    pub(crate) fn state_builder(&self) -> SessionStateBuilder {
        SessionStateBuilder::new_from_existing(self.template.clone())
    }

    /// `session_user()` (what `current_user` and `user` become) naming the session's user.
    pub(crate) fn install_user(context: &SessionContext, user: &str) {
        let user = user.to_string();
        context.register_udf(datafusion::logical_expr::create_udf(
            "session_user",
            vec![],
            datafusion::arrow::datatypes::DataType::Utf8,
            datafusion::logical_expr::Volatility::Stable,
            Arc::new(move |_: &[datafusion::logical_expr::ColumnarValue]| {
                Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                    datafusion::common::ScalarValue::Utf8(Some(user.clone())),
                ))
            }),
        ));
    }

    /// Registers `pg_catalog` and `information_schema` in the session's catalog for `project`,
    /// over that catalog, and the functions that answer from the Quiver catalog,
    /// `current_database()` naming the project.
    pub(crate) fn install(
        &self,
        engine: &Arc<Engine>,
        context: &SessionContext,
        project: &str,
        viewer: &str,
        settings: SettingsView,
    ) -> SqlResult<()> {
        let catalogs = SessionCatalogs(Arc::downgrade(context.state().catalog_list()));
        let generic = PgCatalogSchemaProvider::try_new(
            catalogs.clone(),
            self.static_tables.clone(),
            EmptyContextProvider,
        )?;
        let schema = SystemSchema {
            generic,
            static_tables: self.static_tables.clone(),
            system_tables: self.system_tables.clone(),
            engine: engine.clone(),
            project: project.to_string(),
            viewer: viewer.to_string(),
            catalogs: catalogs.clone(),
            settings,
        };
        let catalog = context
            .catalog(project)
            .ok_or_else(|| SqlError::Internal(format!("no catalog for project {project}")))?;
        catalog.register_schema(SYSTEM_SCHEMA, Arc::new(schema))?;
        catalog.register_schema(
            INFORMATION_SCHEMA,
            Arc::new(information_schema::InformationSchema { catalogs }),
        )?;
        context.register_udf(create_current_database_udf(project));
        for function in functions::all(engine) {
            context.register_udf(function);
        }
        Ok(())
    }
}

/// A session's catalogs, held weakly: they hold its `pg_catalog`, which must not keep them (and
/// so itself) alive after the session ends.
#[derive(Debug, Clone)]
struct SessionCatalogs(Weak<dyn CatalogProviderList>);

impl SessionCatalogs {
    fn get(&self) -> DfResult<Arc<dyn CatalogProviderList>> {
        self.0
            .upgrade()
            .ok_or_else(|| DataFusionError::Internal("the session has ended".into()))
    }
}

#[async_trait]
impl CatalogInfo for SessionCatalogs {
    async fn catalog_names(&self) -> DfResult<Vec<String>> {
        self.get()?.catalog_names().await
    }

    async fn schema_names(&self, catalog_name: &str) -> DfResult<Option<Vec<String>>> {
        self.get()?.schema_names(catalog_name).await
    }

    async fn table_names(
        &self,
        catalog_name: &str,
        schema_name: &str,
    ) -> DfResult<Option<Vec<String>>> {
        self.get()?.table_names(catalog_name, schema_name).await
    }

    async fn table_schema(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> DfResult<Option<SchemaRef>> {
        self.get()?
            .table_schema(catalog_name, schema_name, table_name)
            .await
    }

    async fn table_type(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> DfResult<Option<TableType>> {
        self.get()?
            .table_type(catalog_name, schema_name, table_name)
            .await
    }
}

/// A session's `pg_catalog`: Quiver's tables for the project's objects, datafusion-pg-catalog's
/// for the rest.
#[derive(Debug)]
struct SystemSchema {
    generic: PgCatalogSchemaProvider<SessionCatalogs, EmptyContextProvider>,
    static_tables: Arc<PgCatalogStaticTables>,
    system_tables: Arc<Vec<(String, SchemaRef)>>,
    engine: Arc<Engine>,
    project: String,
    /// The session's user: pg_database lists the projects they may see.
    viewer: String,
    catalogs: SessionCatalogs,
    settings: SettingsView,
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        self.generic.table_names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let generic = self.generic.table(name).await?;
        match generic {
            Some(template) if tables::is_built_here(name) => tables::build(
                &name.to_ascii_lowercase(),
                &template,
                &tables::Sources {
                    static_tables: &self.static_tables,
                    system_tables: &self.system_tables,
                    engine: &self.engine,
                    project: &self.project,
                    viewer: &self.viewer,
                    catalogs: &self.catalogs.get()?,
                    settings: &self.settings,
                },
            )
            .await
            .map(Some)
            .map_err(|e| DataFusionError::External(Box::new(e))),
            other => Ok(other),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.generic.table_exist(name)
    }
}
