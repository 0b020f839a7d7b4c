//! Quiver's statements on top of sqlparser.
//!
//! The parser peeks the first words of each statement: `CREATE FEATURE GROUP`, `SHOW PROJECTS` and
//! the rest of ours are parsed here with sqlparser's own building blocks (identifiers, data types,
//! column definitions, literals); every other statement goes to sqlparser's PostgreSQL dialect
//! unchanged. No SQL text is ever matched with regular expressions.

use datafusion::sql::sqlparser::ast::{self, ColumnDef, ColumnOption, Ident, ObjectName, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;
use datafusion_pg_catalog::pg_catalog::PG_CATALOG_TABLES;
use datafusion_pg_catalog::pg_catalog::oid_field::OID_ALIAS_TYPE_NAMES;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use quiver_catalog::{DatasetFormat, ProjectRole, TimeComparison};
use std::ops::ControlFlow;
use std::sync::LazyLock;

/// One statement, ours or sqlparser's.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// Anything that is not one of Quiver's own statements.
    Sql(Box<ast::Statement>),
    CreateFeatureGroup(CreateFeatureGroup),
    AlterFeatureGroup {
        name: String,
        version: Option<u32>,
        action: AlterFeatureGroupAction,
    },
    DropFeatureGroup {
        name: String,
        version: Option<u32>,
        if_exists: bool,
    },
    ShowFeatureGroups,
    DescribeFeatureGroup {
        name: String,
        version: Option<u32>,
    },
    CreateProject {
        name: String,
        options: Vec<OptionEntry>,
        if_not_exists: bool,
    },
    DropProject {
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    ShowProjects,
    CreateFeatureView(CreateFeatureView),
    DropFeatureView {
        name: String,
        version: Option<u32>,
        if_exists: bool,
    },
    ShowFeatureViews,
    DescribeFeatureView {
        name: String,
        version: Option<u32>,
    },
    CreateTrainingDataset(CreateTrainingDataset),
    RecreateTrainingDataset {
        name: String,
        version: u32,
    },
    DropTrainingDataset {
        name: String,
        version: Option<u32>,
        if_exists: bool,
    },
    ShowTrainingDatasets,
    DescribeTrainingDataset {
        name: String,
        version: Option<u32>,
    },
    DropModel {
        name: String,
        version: Option<u32>,
        if_exists: bool,
    },
    /// `CREATE USER` / `CREATE ROLE` with PostgreSQL's role options.
    CreateUser(Box<ast::CreateRole>),
    /// `ALTER USER` / `ALTER ROLE`.
    AlterUser {
        name: String,
        operation: Box<ast::AlterRoleOperation>,
    },
    DropUser {
        names: Vec<String>,
        if_exists: bool,
    },
    /// `GRANT <role> ON PROJECT p TO u, ...`.
    Grant {
        role: ProjectRole,
        project: String,
        users: Vec<String>,
    },
    /// `REVOKE [<role>] ON PROJECT p FROM u, ...`; without a role, whatever role they have.
    Revoke {
        role: Option<ProjectRole>,
        project: String,
        users: Vec<String>,
    },
    ShareFeatureGroup {
        name: String,
        with: String,
    },
    UnshareFeatureGroup {
        name: String,
        with: String,
    },
    /// `ALTER CLUSTER ADD NODE id 'raft address'` / `ALTER CLUSTER REMOVE NODE id`.
    AlterCluster(ClusterChange),
}

/// A change of the cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChange {
    AddNode { node_id: u64, raft_addr: String },
    RemoveNode { node_id: u64 },
}

/// `CREATE FEATURE VIEW ...` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateFeatureView {
    pub name: String,
    pub version: Option<u32>,
    pub if_not_exists: bool,
    pub query: Box<ast::Query>,
    pub options: Vec<OptionEntry>,
}

/// `CREATE TRAINING DATASET ...` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTrainingDataset {
    pub name: String,
    pub version: Option<u32>,
    pub source: DatasetSourceClause,
    /// The format's name as written (checked when the statement runs).
    pub format: String,
    /// `FORMAT name (key = value, ...)`: the format's options.
    pub format_options: Vec<OptionEntry>,
    pub split: SplitClause,
    pub location: Option<String>,
}

/// Where a training dataset's rows come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSourceClause {
    FeatureView { name: String, version: Option<u32> },
    Query(Box<ast::Query>),
}

/// The `SPLIT` clause of `CREATE TRAINING DATASET`.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitClause {
    None,
    Random {
        weights: Vec<(String, f64)>,
        seed: Option<u64>,
    },
    ByTime {
        /// The time column, when named; otherwise the query's one time column.
        column: Option<String>,
        bounds: Vec<(String, TimeComparison, String)>,
    },
}

/// `CREATE FEATURE GROUP ...` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateFeatureGroup {
    pub name: String,
    pub version: Option<u32>,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDef>,
    pub primary_key: Vec<String>,
    pub event_time: Option<String>,
    pub options: Vec<OptionEntry>,
}

/// What `ALTER FEATURE GROUP` changes.
#[derive(Debug, Clone, PartialEq)]
pub enum AlterFeatureGroupAction {
    Set(Vec<OptionEntry>),
    AddColumn(ColumnDef),
}

/// One `key = value` of a `WITH (...)` or `SET (...)` list.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionEntry {
    pub key: String,
    pub value: OptionValue,
}

/// The value of an option: options are typed by their key, so the literal's kind is kept.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    String(String),
    Number(String),
    Boolean(bool),
    Null,
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::String(s) => write!(f, "'{s}'"),
            OptionValue::Number(n) => write!(f, "{n}"),
            OptionValue::Boolean(b) => write!(f, "{b}"),
            OptionValue::Null => write!(f, "NULL"),
        }
    }
}

/// Parses a string that may hold several statements separated by semicolons.
///
/// Statements that read PostgreSQL's system catalog (psql's `\d`, JDBC metadata, BI tools'
/// introspection) are parsed again by datafusion-pg-catalog's compatibility parser, which rewrites
/// the PostgreSQL-isms of those clients' catalog queries into SQL DataFusion plans (`OPERATOR(
/// pg_catalog.~)`, `COLLATE`, `'name'::regclass`, ...). Its rewrites are meant for catalog
/// queries only (one turns correlated subqueries in a select list into NULL), so user queries on
/// feature groups never go through it.
pub fn parse(sql: &str) -> Result<Vec<Statement>, ParserError> {
    let statements = parse_own(sql)?;
    let all_plain_sql = statements.iter().all(|s| matches!(s, Statement::Sql(_)));
    let introspection = statements
        .iter()
        .any(|s| matches!(s, Statement::Sql(sql) if reads_system_catalog(sql)));
    if !(all_plain_sql && introspection) {
        return Ok(statements);
    }
    static COMPATIBILITY: LazyLock<PostgresCompatibilityParser> =
        LazyLock::new(PostgresCompatibilityParser::new);
    Ok(COMPATIBILITY
        .parse(sql)?
        .into_iter()
        .map(|mut statement| {
            crate::system_catalog::rewrite_catalog_query(&mut statement);
            translate_synonyms(statement)
        })
        .collect())
}

/// Whether a statement names a `pg_catalog` relation or function (qualified, or by the bare name
/// of a pg_catalog table, as PostgreSQL's search path allows), or casts to an OID alias type
/// (`regclass`, `regtype`, ...).
fn reads_system_catalog(statement: &ast::Statement) -> bool {
    fn is_pg_catalog(name: &ObjectName) -> bool {
        match name.0.as_slice() {
            [single] => single.as_ident().is_some_and(|ident| {
                PG_CATALOG_TABLES
                    .iter()
                    .any(|table| table.eq_ignore_ascii_case(&ident.value))
            }),
            [schema, ..] => schema
                .as_ident()
                .is_some_and(|ident| ident.value.eq_ignore_ascii_case("pg_catalog")),
            [] => false,
        }
    }
    let relations = ast::visit_relations(statement, |name| {
        if is_pg_catalog(name) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let functions = ast::visit_expressions(statement, |expr| match expr {
        ast::Expr::Function(call) if call.name.0.len() > 1 && is_pg_catalog(&call.name) => {
            ControlFlow::Break(())
        }
        // `'transactions'::regclass` and friends name catalog objects.
        ast::Expr::Cast {
            data_type: ast::DataType::Regclass,
            ..
        } => ControlFlow::Break(()),
        ast::Expr::Cast {
            data_type: ast::DataType::Custom(type_name, _),
            ..
        } if type_name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .is_some_and(|ident| {
                OID_ALIAS_TYPE_NAMES
                    .iter()
                    .any(|alias| *alias != "oid" && ident.value.eq_ignore_ascii_case(alias))
            }) =>
        {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    relations.is_break() || functions.is_break()
}

fn parse_own(sql: &str) -> Result<Vec<Statement>, ParserError> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        statements.push(parse_statement(&mut parser)?);
        let next = parser.peek_token();
        if next.token != Token::SemiColon && next.token != Token::EOF {
            return parser.expected("end of statement", next);
        }
    }
    Ok(statements)
}

fn parse_statement(parser: &mut Parser) -> Result<Statement, ParserError> {
    if peek_words(parser, &["CREATE", "FEATURE", "GROUP"]) {
        consume_words(parser, 3);
        return parse_create_feature_group(parser).map(Statement::CreateFeatureGroup);
    }
    if peek_words(parser, &["ALTER", "FEATURE", "GROUP"]) {
        consume_words(parser, 3);
        return parse_alter_feature_group(parser);
    }
    if peek_words(parser, &["ALTER", "CLUSTER"]) {
        consume_words(parser, 2);
        return parse_alter_cluster(parser);
    }
    if peek_words(parser, &["DROP", "FEATURE", "GROUP"]) {
        consume_words(parser, 3);
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let (name, version) = parse_versioned_name(parser)?;
        return Ok(Statement::DropFeatureGroup {
            name,
            version,
            if_exists,
        });
    }
    if peek_words(parser, &["SHOW", "FEATURE", "GROUPS"]) {
        consume_words(parser, 3);
        return Ok(Statement::ShowFeatureGroups);
    }
    if peek_words(parser, &["DESCRIBE", "FEATURE", "GROUP"]) {
        consume_words(parser, 3);
        let (name, version) = parse_versioned_name(parser)?;
        return Ok(Statement::DescribeFeatureGroup { name, version });
    }
    if peek_words(parser, &["CREATE", "PROJECT"]) {
        consume_words(parser, 2);
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = parse_name(parser)?;
        let options = if parser.parse_keyword(Keyword::WITH) {
            parse_option_list(parser)?
        } else {
            Vec::new()
        };
        return Ok(Statement::CreateProject {
            name,
            options,
            if_not_exists,
        });
    }
    if peek_words(parser, &["DROP", "PROJECT"]) {
        consume_words(parser, 2);
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = parse_name(parser)?;
        let cascade = parser.parse_keyword(Keyword::CASCADE);
        if !cascade {
            // RESTRICT is the default; the word is accepted and means nothing more.
            let _ = parser.parse_keyword(Keyword::RESTRICT);
        }
        return Ok(Statement::DropProject {
            name,
            if_exists,
            cascade,
        });
    }
    if peek_words(parser, &["SHOW", "PROJECTS"]) {
        consume_words(parser, 2);
        return Ok(Statement::ShowProjects);
    }
    if let Some(statement) = parse_feature_view_statement(parser)? {
        return Ok(statement);
    }
    if let Some(statement) = parse_access_statement(parser)? {
        return Ok(statement);
    }
    if let Some(statement) = parse_training_dataset_statement(parser)? {
        return Ok(statement);
    }
    let statement = parser.parse_statement()?;
    Ok(translate_synonyms(statement))
}

fn parse_feature_view_statement(parser: &mut Parser) -> Result<Option<Statement>, ParserError> {
    if peek_words(parser, &["CREATE", "FEATURE", "VIEW"]) {
        consume_words(parser, 3);
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let (name, version) = parse_versioned_name(parser)?;
        parser.expect_keyword(Keyword::AS)?;
        // The options follow the query: the query ends at the last `WITH (` outside parentheses
        // (a CTE's WITH is followed by a name, never by a parenthesis).
        let query = parse_query_until(parser, |parser, i| {
            is_word(parser, i, "WITH")
                && parser.peek_nth_token_ref(i + 1).token == Token::LParen
                && i > 0
        })?;
        let options = if parser.parse_keyword(Keyword::WITH) {
            parse_option_list(parser)?
        } else {
            Vec::new()
        };
        return Ok(Some(Statement::CreateFeatureView(CreateFeatureView {
            name,
            version,
            if_not_exists,
            query,
            options,
        })));
    }
    if peek_words(parser, &["DROP", "FEATURE", "VIEW"]) {
        consume_words(parser, 3);
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let (name, version) = parse_versioned_name(parser)?;
        return Ok(Some(Statement::DropFeatureView {
            name,
            version,
            if_exists,
        }));
    }
    if peek_words(parser, &["SHOW", "FEATURE", "VIEWS"]) {
        consume_words(parser, 3);
        return Ok(Some(Statement::ShowFeatureViews));
    }
    if peek_words(parser, &["DESCRIBE", "FEATURE", "VIEW"]) {
        consume_words(parser, 3);
        let (name, version) = parse_versioned_name(parser)?;
        return Ok(Some(Statement::DescribeFeatureView { name, version }));
    }
    Ok(None)
}

/// Users, project roles and sharing: `CREATE/ALTER USER|ROLE` (PostgreSQL's role options,
/// parsed by sqlparser once the words that its PostgreSQL dialect reads differently are
/// consumed), `GRANT/REVOKE <role> ON PROJECT`, `SHARE/UNSHARE FEATURE GROUP`.
fn parse_access_statement(parser: &mut Parser) -> Result<Option<Statement>, ParserError> {
    if peek_words(parser, &["CREATE", "USER"]) || peek_words(parser, &["CREATE", "ROLE"]) {
        consume_words(parser, 2);
        return Ok(Some(Statement::CreateUser(Box::new(
            parser.parse_create_role()?,
        ))));
    }
    if peek_words(parser, &["ALTER", "USER"]) || peek_words(parser, &["ALTER", "ROLE"]) {
        consume_words(parser, 2);
        return match parser.parse_alter_role()? {
            ast::Statement::AlterRole { name, operation } => Ok(Some(Statement::AlterUser {
                name: normalize_ident(&name),
                operation: Box::new(operation),
            })),
            other => Err(ParserError::ParserError(format!(
                "unexpected ALTER ROLE form: {other}"
            ))),
        };
    }
    let grant = peek_words(parser, &["GRANT"]);
    if (grant || peek_words(parser, &["REVOKE"])) && peek_project_role(parser, 1).is_some()
        || peek_words(parser, &["REVOKE", "ON", "PROJECT"])
    {
        parser.next_token();
        let role = peek_project_role(parser, 0).map(|(role, words)| {
            consume_words(parser, words);
            role
        });
        parser.expect_keyword(Keyword::ON)?;
        if !peek_words(parser, &["PROJECT"]) {
            return parser.expected("PROJECT", parser.peek_token());
        }
        parser.next_token();
        let project = parse_name(parser)?;
        parser.expect_keyword(if grant { Keyword::TO } else { Keyword::FROM })?;
        let users = parser
            .parse_comma_separated(|p| p.parse_identifier())?
            .iter()
            .map(normalize_ident)
            .collect();
        return Ok(Some(match role {
            // GRANT was only taken as ours when a role follows it.
            Some(role) if grant => Statement::Grant {
                role,
                project,
                users,
            },
            role => Statement::Revoke {
                role,
                project,
                users,
            },
        }));
    }
    for (words, share) in [
        (["SHARE", "FEATURE", "GROUP"], true),
        (["UNSHARE", "FEATURE", "GROUP"], false),
    ] {
        if peek_words(parser, &words) {
            consume_words(parser, 3);
            let name = parse_name(parser)?;
            let preposition = if share { Keyword::WITH } else { Keyword::FROM };
            if !parser.parse_keyword(preposition) && !parser.parse_keyword(Keyword::WITH) {
                return parser.expected(if share { "WITH" } else { "FROM" }, parser.peek_token());
            }
            if !peek_words(parser, &["PROJECT"]) {
                return parser.expected("PROJECT", parser.peek_token());
            }
            parser.next_token();
            let with = parse_name(parser)?;
            return Ok(Some(if share {
                Statement::ShareFeatureGroup { name, with }
            } else {
                Statement::UnshareFeatureGroup { name, with }
            }));
        }
    }
    Ok(None)
}

/// The project role named at token `index`, and how many words it takes.
fn peek_project_role(parser: &Parser, index: usize) -> Option<(ProjectRole, usize)> {
    let at = |offset: usize, word: &str| is_word(parser, index + offset, word);
    if at(0, "DATA") && at(1, "OWNER") {
        Some((ProjectRole::DataOwner, 2))
    } else if at(0, "DATA") && at(1, "SCIENTIST") {
        Some((ProjectRole::DataScientist, 2))
    } else if at(0, "OBSERVER") {
        Some((ProjectRole::Observer, 1))
    } else {
        None
    }
}

fn parse_training_dataset_statement(parser: &mut Parser) -> Result<Option<Statement>, ParserError> {
    if peek_words(parser, &["CREATE", "TRAINING", "DATASET"]) {
        consume_words(parser, 3);
        let (name, version) = parse_versioned_name(parser)?;
        let source = if peek_words(parser, &["FROM", "FEATURE", "VIEW"]) {
            consume_words(parser, 3);
            let (name, version) = parse_versioned_name(parser)?;
            DatasetSourceClause::FeatureView { name, version }
        } else if parser.parse_keyword(Keyword::AS) {
            // The query ends at the last `FORMAT <format name>` outside parentheses.
            DatasetSourceClause::Query(parse_query_until(parser, |parser, i| {
                is_word(parser, i, "FORMAT")
                    && DatasetFormat::ALL
                        .iter()
                        .any(|(format, _)| is_word(parser, i + 1, format))
            })?)
        } else {
            return parser.expected("FROM FEATURE VIEW or AS SELECT", parser.peek_token());
        };
        if !peek_words(parser, &["FORMAT"]) {
            return parser.expected("FORMAT", parser.peek_token());
        }
        consume_words(parser, 1);
        let format = parse_name(parser)?;
        let format_options = if parser.peek_token().token == Token::LParen {
            parse_option_list(parser)?
        } else {
            Vec::new()
        };
        let split = parse_split_clause(parser)?;
        let location = if peek_words(parser, &["LOCATION"]) {
            consume_words(parser, 1);
            Some(parser.parse_literal_string()?)
        } else {
            None
        };
        return Ok(Some(Statement::CreateTrainingDataset(
            CreateTrainingDataset {
                name,
                version,
                source,
                format,
                format_options,
                split,
                location,
            },
        )));
    }
    if peek_words(parser, &["RECREATE", "TRAINING", "DATASET"]) {
        consume_words(parser, 3);
        let name = parse_name(parser)?;
        let Some(version) = parse_optional_version(parser)? else {
            return parser.expected("VERSION", parser.peek_token());
        };
        return Ok(Some(Statement::RecreateTrainingDataset { name, version }));
    }
    if peek_words(parser, &["DROP", "TRAINING", "DATASET"]) {
        consume_words(parser, 3);
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let (name, version) = parse_versioned_name(parser)?;
        return Ok(Some(Statement::DropTrainingDataset {
            name,
            version,
            if_exists,
        }));
    }
    if peek_words(parser, &["SHOW", "TRAINING", "DATASETS"]) {
        consume_words(parser, 3);
        return Ok(Some(Statement::ShowTrainingDatasets));
    }
    if peek_words(parser, &["DESCRIBE", "TRAINING", "DATASET"]) {
        consume_words(parser, 3);
        let (name, version) = parse_versioned_name(parser)?;
        return Ok(Some(Statement::DescribeTrainingDataset { name, version }));
    }
    if peek_words(parser, &["DROP", "MODEL"]) {
        consume_words(parser, 2);
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let (name, version) = parse_versioned_name(parser)?;
        return Ok(Some(Statement::DropModel {
            name,
            version,
            if_exists,
        }));
    }
    Ok(None)
}

/// Parses `SPLIT (name = weight, ...) [SEED n]`, `SPLIT BY TIME [column] (name op 'bound', ...)`
/// or nothing.
fn parse_split_clause(parser: &mut Parser) -> Result<SplitClause, ParserError> {
    if !peek_words(parser, &["SPLIT"]) {
        return Ok(SplitClause::None);
    }
    consume_words(parser, 1);
    if parser.parse_keyword(Keyword::BY) {
        if !peek_words(parser, &["TIME"]) {
            return parser.expected("TIME", parser.peek_token());
        }
        consume_words(parser, 1);
        let column = match parser.peek_token().token {
            Token::LParen => None,
            _ => Some(parse_name(parser)?),
        };
        parser.expect_token(&Token::LParen)?;
        let bounds = parser.parse_comma_separated(|p| {
            let split = parse_name(p)?;
            let comparison = match p.next_token().token {
                Token::Lt => TimeComparison::Lt,
                Token::LtEq => TimeComparison::LtEq,
                Token::Gt => TimeComparison::Gt,
                Token::GtEq => TimeComparison::GtEq,
                other => {
                    return Err(ParserError::ParserError(format!(
                        "split \"{split}\" needs a comparison (<, <=, >, >=) with a time, found {other}"
                    )));
                }
            };
            let bound = match p.parse_value()?.value {
                Value::SingleQuotedString(s) => s,
                Value::Number(n, _) => n.to_string(),
                other => {
                    return Err(ParserError::ParserError(format!(
                        "split \"{split}\" needs a time literal as its bound, found {other}"
                    )));
                }
            };
            Ok((split, comparison, bound))
        })?;
        parser.expect_token(&Token::RParen)?;
        return Ok(SplitClause::ByTime { column, bounds });
    }
    let mut weights = Vec::new();
    for entry in parse_option_list(parser)? {
        let weight = match &entry.value {
            OptionValue::Number(n) => n.parse::<f64>().ok(),
            _ => None,
        }
        .filter(|w| w.is_finite() && *w > 0.0)
        .ok_or_else(|| {
            ParserError::ParserError(format!(
                "split \"{}\" needs a positive number as its fraction, found {}",
                entry.key, entry.value
            ))
        })?;
        weights.push((entry.key, weight));
    }
    let seed = if peek_words(parser, &["SEED"]) {
        consume_words(parser, 1);
        Some(parser.parse_literal_uint()?)
    } else {
        None
    };
    Ok(SplitClause::Random { weights, seed })
}

/// Parses a query that ends where `ends_before(parser, i)` first holds at the top level (outside
/// parentheses), looking no further than the end of the statement; the clauses of our statements
/// that follow a query would otherwise be read as part of it (`WITH (...)` as table hints).
fn parse_query_until(
    parser: &mut Parser,
    ends_before: impl Fn(&Parser, usize) -> bool,
) -> Result<Box<ast::Query>, ParserError> {
    let mut depth = 0usize;
    let mut end = 0;
    let mut split = None;
    loop {
        match &parser.peek_nth_token_ref(end).token {
            Token::EOF => break,
            Token::SemiColon if depth == 0 => break,
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ if depth == 0 && ends_before(parser, end) => split = Some(end),
            _ => {}
        }
        end += 1;
    }
    let length = split.unwrap_or(end);
    let tokens = (0..length)
        .map(|i| parser.peek_nth_token_ref(i).clone())
        .collect();
    let dialect = PostgreSqlDialect {};
    let mut query_parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let query = query_parser.parse_query()?;
    let rest = query_parser.peek_token();
    if rest.token != Token::EOF {
        return query_parser.expected("end of query", rest);
    }
    consume_words(parser, length);
    Ok(query)
}

fn is_word(parser: &Parser, index: usize, word: &str) -> bool {
    matches!(&parser.peek_nth_token_ref(index).token,
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// `CREATE DATABASE` and `DROP DATABASE` are the PostgreSQL spellings of our project statements.
fn translate_synonyms(statement: ast::Statement) -> Statement {
    match statement {
        ast::Statement::CreateDatabase {
            db_name,
            if_not_exists,
            ..
        } => Statement::CreateProject {
            name: object_name_to_string(&db_name),
            options: Vec::new(),
            if_not_exists,
        },
        ast::Statement::Drop {
            object_type: ast::ObjectType::Database,
            if_exists,
            names,
            cascade,
            ..
        } if names.len() == 1 => Statement::DropProject {
            name: object_name_to_string(&names[0]),
            if_exists,
            cascade,
        },
        ast::Statement::Drop {
            object_type: ast::ObjectType::User | ast::ObjectType::Role,
            if_exists,
            names,
            ..
        } => Statement::DropUser {
            names: names.iter().map(object_name_to_string).collect(),
            if_exists,
        },
        other => Statement::Sql(Box::new(other)),
    }
}

fn parse_create_feature_group(parser: &mut Parser) -> Result<CreateFeatureGroup, ParserError> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let (name, version) = parse_versioned_name(parser)?;
    parser.expect_token(&Token::LParen)?;
    let mut columns = Vec::new();
    let mut primary_key = Vec::new();
    let mut event_time = None;
    loop {
        if parser.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
            if !primary_key.is_empty() {
                return Err(ParserError::ParserError(format!(
                    "multiple primary keys for feature group \"{name}\" are not allowed"
                )));
            }
            primary_key = parse_column_list(parser)?;
        } else if peek_words(parser, &["EVENT", "TIME"]) {
            consume_words(parser, 2);
            if event_time.is_some() {
                return Err(ParserError::ParserError(format!(
                    "feature group \"{name}\" names EVENT TIME more than once"
                )));
            }
            event_time = Some(normalize_ident(&parser.parse_identifier()?));
        } else {
            let column = parser.parse_column_def()?;
            if column_is_inline_primary_key(&column) {
                if !primary_key.is_empty() {
                    return Err(ParserError::ParserError(format!(
                        "multiple primary keys for feature group \"{name}\" are not allowed"
                    )));
                }
                primary_key.push(normalize_ident(&column.name));
            }
            columns.push(column);
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    let options = if parser.parse_keyword(Keyword::WITH) {
        parse_option_list(parser)?
    } else {
        Vec::new()
    };
    Ok(CreateFeatureGroup {
        name,
        version,
        if_not_exists,
        columns,
        primary_key,
        event_time,
        options,
    })
}

/// `ADD NODE id 'raft address'` or `REMOVE NODE id`, after `ALTER CLUSTER`.
fn parse_alter_cluster(parser: &mut Parser) -> Result<Statement, ParserError> {
    let add = if peek_words(parser, &["ADD", "NODE"]) {
        true
    } else if peek_words(parser, &["REMOVE", "NODE"]) {
        false
    } else {
        return parser.expected("ADD NODE or REMOVE NODE", parser.peek_token());
    };
    consume_words(parser, 2);
    let node_id = parser.parse_literal_uint()?;
    Ok(Statement::AlterCluster(if add {
        ClusterChange::AddNode {
            node_id,
            raft_addr: parser.parse_literal_string()?,
        }
    } else {
        ClusterChange::RemoveNode { node_id }
    }))
}

fn parse_alter_feature_group(parser: &mut Parser) -> Result<Statement, ParserError> {
    let (name, version) = parse_versioned_name(parser)?;
    let action = if parser.parse_keyword(Keyword::SET) {
        AlterFeatureGroupAction::Set(parse_option_list(parser)?)
    } else if parser.parse_keyword(Keyword::ADD) {
        // COLUMN is an optional noise word, as in PostgreSQL.
        let _ = parser.parse_keyword(Keyword::COLUMN);
        AlterFeatureGroupAction::AddColumn(parser.parse_column_def()?)
    } else {
        return parser.expected("SET or ADD COLUMN", parser.peek_token());
    };
    Ok(Statement::AlterFeatureGroup {
        name,
        version,
        action,
    })
}

/// Whether a column definition carries `PRIMARY KEY` inline.
pub fn column_is_inline_primary_key(column: &ColumnDef) -> bool {
    column
        .options
        .iter()
        .any(|o| matches!(o.option, ColumnOption::PrimaryKey(_)))
}

fn parse_column_list(parser: &mut Parser) -> Result<Vec<String>, ParserError> {
    parser.expect_token(&Token::LParen)?;
    let idents = parser.parse_comma_separated(|p| p.parse_identifier())?;
    parser.expect_token(&Token::RParen)?;
    Ok(idents.iter().map(normalize_ident).collect())
}

/// `name [VERSION n]`.
fn parse_versioned_name(parser: &mut Parser) -> Result<(String, Option<u32>), ParserError> {
    let name = parse_name(parser)?;
    Ok((name, parse_optional_version(parser)?))
}

fn parse_optional_version(parser: &mut Parser) -> Result<Option<u32>, ParserError> {
    if !peek_words(parser, &["VERSION"]) {
        return Ok(None);
    }
    consume_words(parser, 1);
    let version = parser.parse_literal_uint()?;
    match u32::try_from(version) {
        Ok(v) if v >= 1 => Ok(Some(v)),
        _ => Err(ParserError::ParserError(format!(
            "VERSION must be a whole number from 1 to {}, found {version}",
            u32::MAX
        ))),
    }
}

/// Parses `( key = value [, ...] )`.
fn parse_option_list(parser: &mut Parser) -> Result<Vec<OptionEntry>, ParserError> {
    parser.expect_token(&Token::LParen)?;
    let entries = parser.parse_comma_separated(|p| {
        let key = normalize_ident(&p.parse_identifier()?);
        p.expect_token(&Token::Eq)?;
        let value = match p.parse_value()?.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => OptionValue::String(s),
            Value::Number(n, _) => OptionValue::Number(n.to_string()),
            Value::Boolean(b) => OptionValue::Boolean(b),
            Value::Null => OptionValue::Null,
            other => {
                return Err(ParserError::ParserError(format!(
                    "option \"{key}\" takes a string, number or boolean, found {other}"
                )));
            }
        };
        Ok(OptionEntry { key, value })
    })?;
    parser.expect_token(&Token::RParen)?;
    Ok(entries)
}

fn parse_name(parser: &mut Parser) -> Result<String, ParserError> {
    Ok(normalize_ident(&parser.parse_identifier()?))
}

/// PostgreSQL folds unquoted identifiers to lower case and keeps quoted ones as written.
pub fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// An identifier quoted for SQL text we generate.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal for SQL text we generate.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The last part of an object name, normalised; `public.t` and `t` both give `t`.
pub fn object_name_to_string(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .map(normalize_ident)
        .unwrap_or_default()
}

fn peek_words(parser: &Parser, words: &[&str]) -> bool {
    words
        .iter()
        .enumerate()
        .all(|(i, word)| is_word(parser, i, word))
}

fn consume_words(parser: &mut Parser, count: usize) {
    for _ in 0..count {
        parser.next_token();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_queries_get_the_compatibility_rewrites_and_user_queries_do_not() {
        let psql = "SELECT c.oid FROM pg_catalog.pg_class c \
                    WHERE c.relname OPERATOR(pg_catalog.~) '^(g)$' COLLATE pg_catalog.default";
        let parsed: [Statement; 1] = parse(psql).unwrap().try_into().unwrap();
        let [Statement::Sql(rewritten)] = parsed else {
            panic!("one plain statement expected");
        };
        let rewritten = rewritten.to_string();
        assert!(!rewritten.contains("OPERATOR"), "{rewritten}");
        assert!(!rewritten.contains("COLLATE"), "{rewritten}");

        // The compatibility rules would turn this correlated subquery into NULL.
        let user = "SELECT (SELECT max(x) FROM t WHERE t.k = o.k) FROM o";
        let parsed: [Statement; 1] = parse(user).unwrap().try_into().unwrap();
        let [Statement::Sql(kept)] = parsed else {
            panic!("one plain statement expected");
        };
        assert_eq!(kept.to_string(), user);
    }

    #[test]
    fn create_feature_group_with_everything() {
        let statements = parse(
            "CREATE FEATURE GROUP IF NOT EXISTS Transactions VERSION 2 (
                cc_num BIGINT NOT NULL, amount DOUBLE PRECISION, embedding REAL[], ts TIMESTAMP NOT NULL,
                PRIMARY KEY (cc_num), EVENT TIME ts
             ) WITH (online = true, ttl = '30 days', description = 'card transactions');",
        )
        .unwrap();
        let [Statement::CreateFeatureGroup(fg)] = statements.as_slice() else {
            panic!("unexpected {statements:?}");
        };
        assert_eq!(fg.name, "transactions");
        assert_eq!(fg.version, Some(2));
        assert!(fg.if_not_exists);
        assert_eq!(fg.columns.len(), 4);
        assert_eq!(fg.primary_key, vec!["cc_num"]);
        assert_eq!(fg.event_time.as_deref(), Some("ts"));
        assert_eq!(
            fg.options,
            vec![
                OptionEntry {
                    key: "online".into(),
                    value: OptionValue::Boolean(true)
                },
                OptionEntry {
                    key: "ttl".into(),
                    value: OptionValue::String("30 days".into())
                },
                OptionEntry {
                    key: "description".into(),
                    value: OptionValue::String("card transactions".into())
                },
            ]
        );
    }

    #[test]
    fn cluster_membership_changes() {
        assert_eq!(
            parse("ALTER CLUSTER ADD NODE 4 '10.0.0.4:7100'").unwrap(),
            vec![Statement::AlterCluster(ClusterChange::AddNode {
                node_id: 4,
                raft_addr: "10.0.0.4:7100".into()
            })]
        );
        assert_eq!(
            parse("alter cluster remove node 2;").unwrap(),
            vec![Statement::AlterCluster(ClusterChange::RemoveNode {
                node_id: 2
            })]
        );
        for bad in [
            "ALTER CLUSTER ADD NODE 4",
            "ALTER CLUSTER ADD NODE x '1:2'",
            "ALTER CLUSTER DROP NODE 2",
        ] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn several_statements_mix_ours_and_sqlparsers() {
        let statements =
            parse("SHOW FEATURE GROUPS; select 1;; DROP FEATURE GROUP t VERSION 3").unwrap();
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[0], Statement::ShowFeatureGroups);
        assert!(matches!(statements[1], Statement::Sql(_)));
        assert_eq!(
            statements[2],
            Statement::DropFeatureGroup {
                name: "t".into(),
                version: Some(3),
                if_exists: false
            }
        );
    }

    #[test]
    fn database_statements_are_project_synonyms() {
        assert_eq!(
            parse("CREATE DATABASE fraud").unwrap(),
            vec![Statement::CreateProject {
                name: "fraud".into(),
                options: vec![],
                if_not_exists: false
            }]
        );
        assert_eq!(
            parse("DROP DATABASE IF EXISTS fraud").unwrap(),
            vec![Statement::DropProject {
                name: "fraud".into(),
                if_exists: true,
                cascade: false
            }]
        );
    }

    #[test]
    fn a_feature_view_query_ends_where_its_options_begin() {
        let statements = parse(
            "CREATE FEATURE VIEW fraud VERSION 2 AS
               WITH recent AS (SELECT * FROM labels WHERE ts > '2026-01-01')
               SELECT l.cc_num, t.amount FROM recent l
               ASOF JOIN transactions t MATCH_CONDITION (l.ts >= t.ts) ON l.cc_num = t.cc_num
               WITH (label = 'is_fraud', transform = 'amount:standard_scaler')",
        )
        .unwrap();
        let [Statement::CreateFeatureView(view)] = statements.as_slice() else {
            panic!("unexpected {statements:?}");
        };
        assert_eq!(view.version, Some(2));
        assert!(view.query.with.is_some());
        assert_eq!(view.options.len(), 2);
        // A query whose last relation is a plain table keeps the options out of its hints.
        let statements =
            parse("CREATE FEATURE VIEW v AS SELECT * FROM t WITH (label = 'y')").unwrap();
        let [Statement::CreateFeatureView(view)] = statements.as_slice() else {
            panic!("unexpected {statements:?}");
        };
        assert_eq!(view.query.to_string(), "SELECT * FROM t");
        assert_eq!(view.options[0].key, "label");
    }

    #[test]
    fn training_dataset_clauses() {
        let statements = parse(
            "CREATE TRAINING DATASET td AS SELECT format FROM t FORMAT csv
               SPLIT (train = 0.8, test = 0.2) SEED 42 LOCATION 'file:///tmp/td';
             CREATE TRAINING DATASET td VERSION 2 FROM FEATURE VIEW fraud VERSION 1 FORMAT npy
               SPLIT BY TIME (train < '2026-06-01', test >= '2026-06-01')",
        )
        .unwrap();
        let [
            Statement::CreateTrainingDataset(first),
            Statement::CreateTrainingDataset(second),
        ] = statements.as_slice()
        else {
            panic!("unexpected {statements:?}");
        };
        let DatasetSourceClause::Query(query) = &first.source else {
            panic!("a query expected");
        };
        assert_eq!(query.to_string(), "SELECT format FROM t");
        assert_eq!(first.format, "csv");
        assert_eq!(
            first.split,
            SplitClause::Random {
                weights: vec![("train".into(), 0.8), ("test".into(), 0.2)],
                seed: Some(42)
            }
        );
        assert_eq!(first.location.as_deref(), Some("file:///tmp/td"));
        assert_eq!(
            second.source,
            DatasetSourceClause::FeatureView {
                name: "fraud".into(),
                version: Some(1)
            }
        );
        assert_eq!(
            second.split,
            SplitClause::ByTime {
                column: None,
                bounds: vec![
                    ("train".into(), TimeComparison::Lt, "2026-06-01".into()),
                    ("test".into(), TimeComparison::GtEq, "2026-06-01".into()),
                ]
            }
        );
    }

    #[test]
    fn malformed_statements_are_errors_not_panics() {
        for sql in [
            "CREATE FEATURE GROUP",
            "CREATE FEATURE GROUP t (",
            "CREATE FEATURE GROUP t VERSION 0 (a INT, PRIMARY KEY (a))",
            "CREATE FEATURE GROUP t (a INT, PRIMARY KEY (a), PRIMARY KEY (a))",
            "ALTER FEATURE GROUP t DROP",
            "SHOW FEATURE GROUPS extra",
            "CREATE FEATURE GROUP t (a INT) WITH (online = ARRAY[1])",
            "CREATE FEATURE VIEW v AS",
            "CREATE FEATURE VIEW v AS SELECT 1 WITH (label = )",
            "CREATE TRAINING DATASET td AS SELECT 1",
            "CREATE TRAINING DATASET td AS SELECT 1 FORMAT parquet SPLIT (train = -1)",
            "CREATE TRAINING DATASET td AS SELECT 1 FORMAT parquet SPLIT BY TIME (train = '2026')",
            "RECREATE TRAINING DATASET td",
        ] {
            assert!(parse(sql).is_err(), "{sql} parsed");
        }
    }
}
