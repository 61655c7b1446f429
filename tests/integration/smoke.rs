//! The harness itself: a fresh test database carries both schemas, empty.

use crate::support::harness::TestDb;

#[tokio::test]
async fn fresh_test_database_has_both_schemas_and_no_rows() {
    let db = TestDb::new().await;
    let client = db.client().await;

    let df_instances: i64 = client
        .query_one("SELECT count(*) FROM df.instances", &[])
        .await
        .expect("df.instances is queryable")
        .get(0);
    assert_eq!(df_instances, 0);

    let engine_instances_exists: bool = client
        .query_one("SELECT to_regclass('_duroxide.instances') IS NOT NULL", &[])
        .await
        .expect("catalog lookup")
        .get(0);
    assert!(
        engine_instances_exists,
        "_duroxide.instances is missing in {}",
        db.name
    );
}
