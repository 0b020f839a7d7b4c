use super::*;

fn create_group(name: &str, version: u32) -> CatalogCommand {
    CatalogCommand::CreateRelation {
        project: BOOTSTRAP_NAME.into(),
        name: name.into(),
        kind: RelationKind::FeatureGroup(FeatureGroupSpec {
            version,
            event_time: Some("ts".into()),
            options: FeatureGroupOptions::default(),
        }),
        columns: vec![
            Column::new("id", ColumnType::BigInt, false),
            Column::new("ts", ColumnType::Timestamp, false),
        ],
        primary_key: vec!["id".into()],
        owner: BOOTSTRAP_NAME.into(),
        created_at: Utc::now(),
    }
}

#[test]
fn fresh_catalog_has_the_bootstrap_user_and_project() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let state = catalog.snapshot();
    assert!(state.user("quiver").unwrap().superuser);
    assert_eq!(state.project("quiver").unwrap().oid, FIRST_USER_OID + 1);
}

#[test]
fn bare_name_resolves_to_latest_version_and_suffix_to_exact_one() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    catalog.execute(create_group("tx", 1)).unwrap();
    catalog.execute(create_group("tx", 2)).unwrap();
    let state = catalog.snapshot();
    let version_of = |name: &str| {
        state
            .resolve("quiver", name)
            .and_then(|r| r.feature_group())
            .map(|s| s.version)
    };
    assert_eq!(version_of("tx"), Some(2));
    assert_eq!(version_of("tx_1"), Some(1));
    assert_eq!(version_of("tx_3"), None);
    assert!(matches!(
        catalog.execute(create_group("tx", 2)),
        Err(CatalogError::Duplicate(_))
    ));
}

#[test]
fn a_table_and_a_feature_group_cannot_share_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    catalog.execute(create_group("tx", 1)).unwrap();
    let table = CatalogCommand::CreateRelation {
        project: BOOTSTRAP_NAME.into(),
        name: "tx_1".into(),
        kind: RelationKind::Table,
        columns: vec![Column::new("a", ColumnType::Integer, true)],
        primary_key: vec![],
        owner: BOOTSTRAP_NAME.into(),
        created_at: Utc::now(),
    };
    assert!(matches!(
        catalog.execute(table),
        Err(CatalogError::Duplicate(_))
    ));
}

#[test]
fn replaying_the_log_rebuilds_the_same_state_and_drops_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let catalog = Catalog::open(dir.path()).unwrap();
        catalog.execute(create_group("tx", 1)).unwrap();
        catalog
            .execute(CatalogCommand::AlterFeatureGroup {
                project: BOOTSTRAP_NAME.into(),
                name: "tx".into(),
                version: 1,
                patch: FeatureGroupOptionsPatch {
                    description: Some(Some("card transactions".into())),
                    ..Default::default()
                },
            })
            .unwrap();
        catalog.snapshot()
    };
    // A crash in the middle of an append leaves a partial line behind.
    let log_path = dir.path().join("catalog.log");
    let mut bytes = std::fs::read(&log_path).unwrap();
    bytes.extend_from_slice(b"{\"index\":4,\"comm");
    std::fs::write(&log_path, bytes).unwrap();

    let catalog = Catalog::open(dir.path()).unwrap();
    let after = catalog.snapshot();
    assert_eq!(after.applied_commands(), before.applied_commands());
    assert_eq!(
        after.resolve("quiver", "tx").unwrap(),
        before.resolve("quiver", "tx").unwrap()
    );
    // The next command lands on a line of its own and survives another reopen.
    catalog.execute(create_group("tx", 2)).unwrap();
    drop(catalog);
    let reopened = Catalog::open(dir.path()).unwrap();
    assert_eq!(
        reopened
            .snapshot()
            .feature_group("quiver", "tx", None)
            .unwrap()
            .feature_group()
            .unwrap()
            .version,
        2
    );
}

#[test]
fn failed_commands_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let applied = catalog.snapshot().applied_commands();
    let bad = CatalogCommand::CreateRelation {
        project: BOOTSTRAP_NAME.into(),
        name: "t".into(),
        kind: RelationKind::Table,
        columns: vec![Column::new("a", ColumnType::Integer, true)],
        primary_key: vec!["missing".into()],
        owner: BOOTSTRAP_NAME.into(),
        created_at: Utc::now(),
    };
    assert!(matches!(
        catalog.execute(bad),
        Err(CatalogError::UndefinedColumn { .. })
    ));
    drop(catalog);
    let reopened = Catalog::open(dir.path()).unwrap();
    assert_eq!(reopened.snapshot().applied_commands(), applied);
}

#[test]
fn dropping_a_project_with_relations_needs_cascade() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    catalog.execute(create_group("tx", 1)).unwrap();
    let drop = |cascade| CatalogCommand::DropProject {
        name: BOOTSTRAP_NAME.into(),
        cascade,
    };
    assert!(matches!(
        catalog.execute(drop(false)),
        Err(CatalogError::DependentObjects(_))
    ));
    match catalog.execute(drop(true)).unwrap() {
        Applied::Dropped(relations) => assert_eq!(relations.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
}

fn feature_view(name: &str, version: u32, depends_on: Vec<Oid>) -> CatalogCommand {
    CatalogCommand::CreateFeatureView(FeatureView {
        oid: 0,
        project: BOOTSTRAP_NAME.into(),
        name: name.into(),
        version,
        query: "SELECT id FROM tx_1".into(),
        columns: vec![ResultColumn {
            name: "id".into(),
            type_name: "bigint".into(),
        }],
        label: None,
        transforms: vec![],
        description: None,
        depends_on,
        owner: BOOTSTRAP_NAME.into(),
        created_at: Utc::now(),
    })
}

#[test]
fn a_feature_view_is_versioned_and_keeps_the_groups_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    let Applied::Relation(group) = catalog.execute(create_group("tx", 1)).unwrap() else {
        panic!("a relation expected");
    };
    catalog.execute(feature_view("fv", 1, vec![group])).unwrap();
    catalog.execute(feature_view("fv", 2, vec![group])).unwrap();
    let state = catalog.snapshot();
    assert_eq!(
        state.resolve_feature_view("quiver", "fv").unwrap().version,
        2
    );
    assert_eq!(
        state
            .resolve_feature_view("quiver", "fv_1")
            .unwrap()
            .version,
        1
    );
    assert!(matches!(
        state.feature_view("quiver", "fv", Some(3)),
        Err(CatalogError::UndefinedVersion { .. })
    ));
    assert!(matches!(
        state.feature_view("quiver", "nope", None),
        Err(CatalogError::UndefinedObject { .. })
    ));
    // The name is taken for relations too, and the group cannot go while a view reads it.
    assert!(matches!(
        catalog.execute(create_group("fv", 1)),
        Err(CatalogError::Duplicate(_))
    ));
    assert!(matches!(
        catalog.execute(feature_view("tx", 1, vec![])),
        Err(CatalogError::Duplicate(_))
    ));
    assert!(matches!(
        catalog.execute(CatalogCommand::DropRelations { oids: vec![group] }),
        Err(CatalogError::DependentObjects(_))
    ));
    let views: Vec<Oid> = state.feature_views("quiver").map(|v| v.oid).collect();
    catalog
        .execute(CatalogCommand::DropFeatureViews { oids: views })
        .unwrap();
    catalog
        .execute(CatalogCommand::DropRelations { oids: vec![group] })
        .unwrap();
}

#[test]
fn memberships_shares_and_owners_follow_users_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).unwrap();
    for name in ["alice", "bob"] {
        catalog
            .execute(CatalogCommand::CreateUser {
                name: name.into(),
                superuser: false,
                password: None,
                connection_limit: None,
            })
            .unwrap();
    }
    catalog
        .execute(CatalogCommand::CreateProject {
            name: "fraud".into(),
            description: None,
            owner: "alice".into(),
            created_at: Utc::now(),
        })
        .unwrap();
    let grant = |user: &str, role| CatalogCommand::Grant {
        project: "fraud".into(),
        user: user.into(),
        role,
    };
    catalog
        .execute(grant("bob", ProjectRole::Observer))
        .unwrap();
    let state = catalog.snapshot();
    assert_eq!(
        state.role_in("fraud", "alice"),
        Some(ProjectRole::DataOwner)
    );
    assert_eq!(state.role_in("fraud", "bob"), Some(ProjectRole::Observer));
    assert_eq!(state.role_in("quiver", "bob"), None);
    assert_eq!(
        state.role_in("fraud", "quiver"),
        Some(ProjectRole::DataOwner)
    );
    let visible: Vec<_> = state
        .visible_projects("bob")
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(visible, ["fraud"]);

    // Sharing needs the group to exist, and ends with its last version.
    let share = CatalogCommand::ShareFeatureGroup {
        project: BOOTSTRAP_NAME.into(),
        group: "tx".into(),
        with: "fraud".into(),
    };
    assert!(matches!(
        catalog.execute(share.clone()),
        Err(CatalogError::UndefinedFeatureGroup(_))
    ));
    let Applied::Relation(oid) = catalog.execute(create_group("tx", 1)).unwrap() else {
        panic!("no relation")
    };
    catalog.execute(share).unwrap();
    let shared: Vec<_> = catalog
        .snapshot()
        .shared_with("fraud")
        .map(|(o, g)| (o.to_string(), g.to_string()))
        .collect();
    assert_eq!(shared, [("quiver".to_string(), "tx".to_string())]);
    catalog
        .execute(CatalogCommand::DropRelations { oids: vec![oid] })
        .unwrap();
    assert_eq!(catalog.snapshot().shared_with("fraud").count(), 0);

    // A user who owns something cannot be dropped; their memberships go with them.
    assert!(matches!(
        catalog.execute(CatalogCommand::DropUser {
            name: "alice".into()
        }),
        Err(CatalogError::DependentObjects(_))
    ));
    catalog
        .execute(CatalogCommand::DropUser { name: "bob".into() })
        .unwrap();
    assert!(
        !catalog
            .snapshot()
            .project("fraud")
            .unwrap()
            .members
            .contains_key("bob")
    );

    // Replaying the log gives the same access state.
    drop(catalog);
    let reopened = Catalog::open(dir.path()).unwrap();
    assert_eq!(
        reopened.snapshot().role_in("fraud", "alice"),
        Some(ProjectRole::DataOwner)
    );
    assert!(reopened.snapshot().user("bob").is_none());
}
