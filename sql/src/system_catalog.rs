//! PostgreSQL's system catalog for clients: psql's `\d`, drivers' metadata calls, BI tools'
//! introspection. datafusion-pg-catalog provides it: `pg_catalog.pg_class`, `pg_attribute`,
//! `pg_namespace`, ... derived from a session's DataFusion catalogs, static tables such as `pg_type`,
//! and the functions and type names (`format_type`, `regclass`, ...) those clients' queries use.
//!
//! Decoding the static tables takes milliseconds, far more than the rest of a connection's
//! setup, so they and the functions are made once per engine; each session gets its own
//! `pg_catalog` schema over its own project.

use std::sync::Arc;

use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    PgCatalogSchemaProvider, PgCatalogStaticTables, create_current_database_udf,
};
use datafusion_pg_catalog::setup_pg_catalog;

use crate::error::{SqlError, SqlResult};
use crate::project_catalog::SYSTEM_SCHEMA;

/// What every session's `pg_catalog` is made from.
#[derive(Debug)]
pub(crate) struct SystemCatalog {
    static_tables: Arc<PgCatalogStaticTables>,
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
        Ok(SystemCatalog {
            static_tables: Arc::new(PgCatalogStaticTables::try_new()?),
            template: template.state(),
        })
    }

    /// A session state builder holding the functions and planners; the caller sets the
    /// configuration, catalogs and runtime.
    pub(crate) fn state_builder(&self) -> SessionStateBuilder {
        SessionStateBuilder::new_from_existing(self.template.clone())
    }

    /// Registers `pg_catalog` in the session's catalog for `project`, over that catalog, and the
    /// `current_database()` that names the project.
    pub(crate) fn install(&self, context: &SessionContext, project: &str) -> SqlResult<()> {
        let schema = PgCatalogSchemaProvider::try_new(
            context.state().catalog_list().clone(),
            self.static_tables.clone(),
            EmptyContextProvider,
        )?;
        context
            .catalog(project)
            .ok_or_else(|| SqlError::Internal(format!("no catalog for project {project}")))?
            .register_schema(SYSTEM_SCHEMA, Arc::new(schema))?;
        context.register_udf(create_current_database_udf(project));
        Ok(())
    }
}
