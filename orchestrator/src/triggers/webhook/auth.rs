//! Who may deliver: the trigger a delivery is for and the credentials it names, checked before
//! anything else. Every way to fail here answers the same 401 (see [`super::Refusal::
//! unauthorized`]); the reason ([`Denied`]) goes to the log only, so that a caller without
//! credentials learns nothing: not which namespaces, flows or triggers exist, nor what was wrong.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use rpaflow_core::flow::{Trigger, TriggerKind, WebhookTrigger};
use rpaflow_core::signature;

use crate::error::Error;
use crate::orchestrator::{FlowView, OrchestratorHandle};

/// Why a delivery was not let in: logged, never answered.
#[derive(Debug, thiserror::Error)]
pub(super) enum Denied {
    #[error("no such namespace")]
    UnknownNamespace,
    #[error("no such flow")]
    UnknownFlow,
    #[error("the flow has no webhook trigger")]
    NoWebhook,
    #[error("the flow has no webhook trigger of that id")]
    UnknownTrigger,
    #[error("the flow has several webhook triggers and the delivery names none (?trigger=ID)")]
    Ambiguous,
    #[error("the trigger names no credentials")]
    NoCredentials,
    #[error("the trigger's secret `{0}` is not set (rpaflow secret set)")]
    SecretNotSet(String),
    #[error("no X-Rpaflow-Signature header")]
    NoSignature,
    #[error("no X-Rpaflow-Delivery header, which a signed delivery needs")]
    NoDelivery,
    #[error(transparent)]
    Signature(#[from] signature::Error),
    #[error("no Authorization: Bearer token")]
    NoToken,
    #[error("the bearer token is not the trigger's")]
    WrongToken,
    /// Looking the flow or a secret up failed: not the caller's fault, but still not an answer
    /// that may say more than "unauthorized" before the caller proved anything.
    #[error("lookup failed: {0}")]
    Lookup(#[source] Error),
}

impl Denied {
    /// Whether the trigger exists and the caller failed its check (worth an operator's look),
    /// rather than aiming at something that is not there.
    pub(super) fn reached_a_trigger(&self) -> bool {
        !matches!(
            self,
            Self::UnknownNamespace
                | Self::UnknownFlow
                | Self::NoWebhook
                | Self::UnknownTrigger
                | Self::Ambiguous
        )
    }
}

/// What a delivery is to start once let in.
pub(super) struct Admitted {
    pub view: FlowView,
    pub trigger_id: String,
    pub trigger: WebhookTrigger,
    /// `X-Rpaflow-Delivery`, when sent; a signed delivery always has a checked one.
    pub delivery: Option<String>,
}

/// A delivery as it arrived.
pub(super) struct Delivery<'a> {
    pub namespace: &'a str,
    pub flow: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Finds the trigger `delivery` is for and checks every credential that trigger configures.
pub(super) fn admit(
    handle: &OrchestratorHandle,
    tolerance: Duration,
    delivery: &Delivery<'_>,
) -> Result<Admitted, Denied> {
    let found = find(handle, delivery);
    let (view, trigger_id, trigger) = match found {
        Ok(found) => found,
        Err(denied) => {
            // Do the body-sized work a real check does, so that the time to answer does not
            // say whether the target exists.
            let _ = check_signature(b"", delivery, tolerance);
            return Err(denied);
        }
    };
    // The flow's own namespace's secrets.
    let namespace = rpaflow_core::namespace::of(&view.record.name).to_owned();
    let secret = |name: &str| -> Result<String, Denied> {
        handle
            .store()
            .secret(&rpaflow_core::namespace::qualify(&namespace, name))
            .map_err(Denied::Lookup)?
            .ok_or_else(|| Denied::SecretNotSet(name.to_owned()))
    };
    if trigger.signature_secret.is_none() && trigger.token_secret.is_none() {
        // The parser refuses such a trigger; never start runs for anyone all the same.
        return Err(Denied::NoCredentials);
    }
    if let Some(name) = &trigger.signature_secret {
        let key = secret(name)?;
        check_signature(key.as_bytes(), delivery, tolerance)?;
    }
    if let Some(name) = &trigger.token_secret {
        let token = secret(name)?;
        let given = delivery
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Denied::NoToken)?;
        if !signature::same_secret(given.trim().as_bytes(), token.as_bytes()) {
            return Err(Denied::WrongToken);
        }
    }
    let delivery = delivery_id(delivery.headers);
    Ok(Admitted {
        view,
        trigger_id,
        trigger,
        delivery,
    })
}

/// The flow and its webhook trigger a delivery names.
fn find(
    handle: &OrchestratorHandle,
    delivery: &Delivery<'_>,
) -> Result<(FlowView, String, WebhookTrigger), Denied> {
    match handle.store().namespace_exists(delivery.namespace) {
        Ok(true) => {}
        Ok(false) => return Err(Denied::UnknownNamespace),
        Err(err) => return Err(Denied::Lookup(err)),
    }
    let view = match handle.get_flow(delivery.namespace, delivery.flow, 0) {
        Ok(view) => view,
        Err(Error::FlowNotFound(_) | Error::FlowVersionNotFound { .. } | Error::NotFound(_)) => {
            return Err(Denied::UnknownFlow);
        }
        Err(err) => return Err(Denied::Lookup(err)),
    };
    let (id, trigger) = pick_trigger(&view.flow.triggers, delivery.query)?;
    let (id, trigger) = (id.to_owned(), trigger.clone());
    Ok((view, id, trigger))
}

/// The webhook trigger a delivery is for: the one named by `?trigger=ID`, else the only one.
fn pick_trigger<'a>(
    triggers: &'a [Trigger],
    query: Option<&str>,
) -> Result<(&'a str, &'a WebhookTrigger), Denied> {
    let mut webhooks = triggers.iter().filter_map(|t| match &t.kind {
        TriggerKind::Webhook(w) => Some((t.id.as_str(), w)),
        _ => None,
    });
    let wanted = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("trigger="))
            .filter(|id| !id.is_empty())
    });
    match wanted {
        Some(id) => webhooks
            .find(|(tid, _)| *tid == id)
            .ok_or(Denied::UnknownTrigger),
        None => match (webhooks.next(), webhooks.next()) {
            (None, _) => Err(Denied::NoWebhook),
            (Some(only), None) => Ok(only),
            (Some(_), Some(_)) => Err(Denied::Ambiguous),
        },
    }
}

/// `X-Rpaflow-Delivery` as text, trimmed; `None` when absent. Whether it is a valid id is for
/// the caller to say.
fn delivery_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(signature::DELIVERY_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
}

/// Checks `X-Rpaflow-Signature` and `X-Rpaflow-Delivery` under `key` against the clock.
fn check_signature(key: &[u8], delivery: &Delivery<'_>, tolerance: Duration) -> Result<(), Denied> {
    let id = delivery_id(delivery.headers).ok_or(Denied::NoDelivery)?;
    let given = delivery
        .headers
        .get(signature::HEADER)
        .ok_or(Denied::NoSignature)?;
    let now = rpaflow_core::time::now_s();
    signature::verify(key, given.as_bytes(), &id, delivery.body, now, tolerance)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use rpaflow_core::signature::DEFAULT_TOLERANCE;

    use super::*;

    fn webhook(id: &str) -> Trigger {
        Trigger {
            id: id.to_owned(),
            kind: TriggerKind::Webhook(WebhookTrigger {
                signature_secret: Some("KEY".into()),
                token_secret: None,
                input: None,
            }),
        }
    }

    #[test]
    fn the_trigger_is_the_only_webhook_or_the_one_named() {
        let one = [webhook("a")];
        let two = [webhook("a"), webhook("b")];
        assert_eq!(pick_trigger(&one, None).unwrap().0, "a");
        assert_eq!(pick_trigger(&one, Some("x=1&trigger=a")).unwrap().0, "a");
        assert_eq!(pick_trigger(&two, Some("trigger=b")).unwrap().0, "b");
        assert!(matches!(pick_trigger(&two, None), Err(Denied::Ambiguous)));
        assert!(matches!(
            pick_trigger(&two, Some("trigger=")),
            Err(Denied::Ambiguous)
        ));
        assert!(matches!(
            pick_trigger(&two, Some("trigger=c")),
            Err(Denied::UnknownTrigger)
        ));
        assert!(matches!(pick_trigger(&[], None), Err(Denied::NoWebhook)));
    }

    #[test]
    fn signed_deliveries_need_a_fresh_signature_over_their_delivery_id() {
        let body = br#"{"n": 1}"#;
        let now = rpaflow_core::time::now_s();
        let with = |pairs: &[(&'static str, String)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            headers
        };
        let check = |headers: &HeaderMap| {
            let delivery = Delivery {
                namespace: "default",
                flow: "f",
                query: None,
                headers,
                body,
            };
            check_signature(b"key", &delivery, DEFAULT_TOLERANCE)
        };
        let signed = signature::sign(b"key", now, "d-1", body);
        let good = with(&[
            (signature::HEADER, signed.clone()),
            (signature::DELIVERY_HEADER, " d-1 ".into()),
        ]);
        assert!(check(&good).is_ok());
        let other_id = with(&[
            (signature::HEADER, signed.clone()),
            (signature::DELIVERY_HEADER, "d-2".into()),
        ]);
        assert!(matches!(
            check(&other_id),
            Err(Denied::Signature(signature::Error::Mismatch))
        ));
        let no_id = with(&[(signature::HEADER, signed)]);
        assert!(matches!(check(&no_id), Err(Denied::NoDelivery)));
        let unsigned = with(&[(signature::DELIVERY_HEADER, "d-1".into())]);
        assert!(matches!(check(&unsigned), Err(Denied::NoSignature)));
        let stale = with(&[
            (
                signature::HEADER,
                signature::sign(b"key", now - 600, "d-1", body),
            ),
            (signature::DELIVERY_HEADER, "d-1".into()),
        ]);
        assert!(matches!(
            check(&stale),
            Err(Denied::Signature(signature::Error::Expired { .. }))
        ));
    }

    #[test]
    fn only_missing_targets_count_as_not_reaching_a_trigger() {
        assert!(!Denied::UnknownFlow.reached_a_trigger());
        assert!(!Denied::Ambiguous.reached_a_trigger());
        assert!(Denied::WrongToken.reached_a_trigger());
        assert!(Denied::SecretNotSet("K".into()).reached_a_trigger());
    }
}
