use super::*;
use crate::state::{EventKind, RunEvent, RunStatus};

fn summary(id: &str, key: &str) -> RunSummary {
    RunSummary {
        run_id: id.into(),
        flow: "f".into(),
        version: 1,
        status: "running".into(),
        created_at_ms: 1,
        updated_at_ms: 1,
        idempotency_key: key.into(),
        error: None,
        trigger: String::new(),
    }
}

fn event(seq: u64) -> RunEvent {
    RunEvent {
        seq,
        at_ms: 1,
        kind: EventKind::RunCancelled {
            reason: format!("{seq}"),
        },
    }
}

#[tokio::test]
async fn runs_and_events_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store
                .create_run(&summary("r1", ""), &[event(1)])
                .await
                .unwrap(),
            Created::New
        );
        let mut done = summary("r1", "");
        done.status = "succeeded".into();
        store
            .append("r1", &[event(2), event(3)], Some(&done))
            .await
            .unwrap();
        store
            .create_run(&summary("r2", ""), &[event(1)])
            .await
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.events("r1", 0).unwrap().len(), 3);
    assert_eq!(store.events("r1", 3).unwrap(), vec![event(3)]);
    assert_eq!(store.active_runs().unwrap(), vec!["r2".to_owned()]);
    assert_eq!(
        store.run("r1").unwrap().unwrap().status(),
        RunStatus::Succeeded
    );
    let listed = store
        .list_runs(
            rpaflow_core::namespace::DEFAULT,
            "",
            Some(RunStatus::Running),
            "",
            10,
        )
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
        vec!["r2"]
    );
}

#[tokio::test]
async fn idempotency_keys_name_the_first_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store
            .create_run(&summary("r1", "k"), &[event(1)])
            .await
            .unwrap(),
        Created::New
    );
    assert_eq!(
        store
            .create_run(&summary("r2", "k"), &[event(1)])
            .await
            .unwrap(),
        Created::Existing("r1".into())
    );
    assert!(store.run("r2").unwrap().is_none());
}

#[tokio::test]
async fn flows_keep_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (name, v) in [("a", 1), ("a", 2), ("b", 1)] {
        let rec = FlowRecord {
            name: name.into(),
            version: v,
            source: String::new(),
            file_name: String::new(),
            created_at_ms: 0,
        };
        store.put_flow(&rec).await.unwrap();
    }
    assert_eq!(store.flow_versions("a").unwrap(), vec![1, 2]);
    let latest: Vec<(String, u32)> = store
        .latest_flows()
        .unwrap()
        .into_iter()
        .map(|r| (r.name, r.version))
        .collect();
    assert_eq!(latest, vec![("a".into(), 2), ("b".into(), 1)]);
}

#[tokio::test]
async fn schedules_persist_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let record = ScheduleRecord {
        flow: "f".into(),
        trigger: "nightly".into(),
        spec: "0 2 * * *|UTC||".into(),
        next_ms: Some(7_200_000),
        paused: false,
        last_fire_ms: None,
    };
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_schedule(&record).await.unwrap();
        let other = ScheduleRecord {
            trigger: "gone".into(),
            ..record.clone()
        };
        store.put_schedule(&other).await.unwrap();
        store.remove_schedule("f", "gone").await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schedules().unwrap(), vec![record]);
}

#[tokio::test]
async fn secrets_are_stored_sealed_and_resealed_under_a_rotated_key() {
    use rpaflow_core::secrets::SecretsKey;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (SecretsKey::random_bytes(), SecretsKey::random_bytes());
    {
        let store = Store::open(dir.path()).unwrap();
        store.use_secrets_key(SecretsKey::new(old, Vec::new()));
        store.put_secret("TOKEN", "s3cr3t-value").await.unwrap();
        let sealed = store.sealed_secret("TOKEN").unwrap().unwrap();
        assert!(SecretsKey::is_sealed(&sealed) && !sealed.contains("s3cr3t"));
        assert_eq!(store.secret("TOKEN").unwrap().unwrap(), "s3cr3t-value");
        assert_eq!(store.reseal_secrets().await.unwrap(), 0);
    }
    // The new key, with the old one still able to open.
    let rotated = SecretsKey::new(new, vec![old]);
    {
        let store = Store::open(dir.path()).unwrap();
        store.use_secrets_key(rotated.clone());
        assert_eq!(store.reseal_secrets().await.unwrap(), 1);
        let sealed = store.sealed_secret("TOKEN").unwrap().unwrap();
        assert!(rotated.is_current(&sealed));
    }
    // Once resealed, the new key alone opens it; the old one alone does not.
    let store = Store::open(dir.path()).unwrap();
    store.use_secrets_key(SecretsKey::new(new, Vec::new()));
    assert_eq!(store.secret("TOKEN").unwrap().unwrap(), "s3cr3t-value");
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    store.use_secrets_key(SecretsKey::new(old, Vec::new()));
    assert!(store.secret("TOKEN").is_err());
    assert!(
        store
            .reseal_secrets()
            .await
            .unwrap_err()
            .to_string()
            .contains("neither the current secrets key")
    );
}
