//! What an authenticated delivery is answered, with runs started on a fake [`RunStarter`].

use rpaflow_core::flow::TriggerKind;

use super::*;
use crate::triggers::testing::{FakeStarter, flow};

#[test]
fn headers_in_scope_leave_out_credentials() {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    headers.insert("x-source", HeaderValue::from_static("crm"));
    headers.append("x-tag", HeaderValue::from_static("a"));
    headers.append("x-tag", HeaderValue::from_static("b"));
    assert_eq!(
        headers_json(&headers),
        json!({"x-source": "crm", "x-tag": "a, b"})
    );
}

const ORDERS: &str = r#"
name: orders
inputs:
  customer: { type: string }
triggers:
  - id: crm
    webhook: { token_secret: crm_token, input: "{{ body.order }}" }
steps:
  - { id: hello, uses: log, with: { message: hi } }
"#;

/// A delivery to `orders` that passed authentication, with `delivery` as its id.
fn admitted(delivery: Option<&str>) -> Admitted {
    let view = flow(ORDERS, 3);
    let TriggerKind::Webhook(trigger) = view.flow.triggers[0].kind.clone() else {
        panic!("a webhook trigger")
    };
    Admitted {
        view,
        trigger_id: "crm".into(),
        trigger,
        delivery: delivery.map(str::to_owned),
    }
}

/// The answer's status, `Retry-After` header and JSON body.
async fn answer(
    starter: &FakeStarter,
    delivery: Option<&str>,
    body: &str,
) -> (StatusCode, Option<String>, Json) {
    let response = match accept(
        starter,
        "orders",
        admitted(delivery),
        &HeaderMap::new(),
        body.as_bytes(),
    )
    .await
    {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap())
}

fn starter() -> FakeStarter {
    let starter = FakeStarter::default();
    *starter.flows.lock().unwrap() = vec![flow(ORDERS, 3)];
    starter
}

#[tokio::test]
async fn a_delivery_starts_one_run_per_delivery_id_from_its_mapped_body() {
    let starter = starter();
    let body = r#"{"order": {"customer": "Ada"}, "noise": 1}"#;
    let (status, _, first) = answer(&starter, Some("d-1"), body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["created"], json!(true));
    assert_eq!(first["flow"], json!("orders"));
    assert_eq!(first["version"], json!(3));
    assert_eq!(first["status"], json!("running"));
    {
        let starts = starter.starts.lock().unwrap();
        assert_eq!(starts[0].flow, "orders");
        assert_eq!(starts[0].version, 3);
        assert_eq!(starts[0].trigger, "webhook:crm");
        assert_eq!(starts[0].idempotency_key, "webhook:orders:crm:d-1");
        assert_eq!(
            Json::Object(starts[0].inputs.clone()),
            json!({"customer": "Ada"})
        );
    }

    // The sender's retry of the same delivery learns it took.
    let (status, _, again) = answer(&starter, Some("d-1"), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["created"], json!(false));
    assert_eq!(again["run_id"], first["run_id"]);

    // Without a delivery id, every delivery is a run of its own.
    let (status, _, _) = answer(&starter, None, body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(starter.starts.lock().unwrap()[2].idempotency_key, "");
}

#[tokio::test]
async fn bodies_and_ids_that_cannot_start_a_run_are_refused_before_any_start() {
    let starter = starter();
    let (status, _, refused) = answer(&starter, Some("d-1"), "{\"order\": ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("the body is not JSON")
    );
    assert_eq!(refused["line"], json!(1));

    let (status, _, refused) = answer(&starter, Some("d-1"), r#"{"order": [1]}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused["error"].as_str().unwrap().contains("not an array"),
        "{refused}"
    );

    let (status, _, _) = answer(&starter, Some("a.b"), r#"{"order": {}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(starter.starts.lock().unwrap().is_empty());
}

#[tokio::test]
async fn refused_starts_answer_what_the_sender_should_do() {
    let cases = [
        (
            Error::ResourceExhausted("too many runs".into()),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            Error::FailedPrecondition("flow orders has 1 runs active".into()),
            StatusCode::CONFLICT,
        ),
        (
            Error::NotRunning("orchestrator"),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Error::InvalidArgument("input `customer` is required".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (err, want) in cases {
        let starter = starter();
        let message = err.to_string();
        starter.refusals.lock().unwrap().push_back(err);
        let (status, retry_after, body) = answer(&starter, Some("d-1"), r#"{"order": {}}"#).await;
        assert_eq!(status, want, "{message}");
        assert_eq!(body["error"], json!(message));
        let wants_retry_after = want == StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(retry_after.is_some(), wants_retry_after, "{message}");
    }
}
