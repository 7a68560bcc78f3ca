//! The egress policy of steps that reach the network (`http`, `notify`, `sql`, `browser`):
//! which hosts and addresses they may connect to (`worker.egress`, see `docs/security.md`).
//!
//! A namespace may have a policy of its own (`worker.egress_namespaces.<namespace>`), complete in
//! itself; the others, and namespaces the worker does not know, have `worker.egress`. Each policy
//! has its own [`Egress`] and its own executors for those four kinds (see
//! [`Registry::for_config`](crate::Registry::for_config)), so everything below holds for every
//! namespace alike, and a denial names the setting of the policy that applied.
//!
//! Destinations are checked after name resolution, and the addresses that passed are the ones
//! connected to, so a name that resolves differently a second time (DNS rebinding) gains nothing:
//! - `http` and `notify` webhooks: reqwest resolves through [`Egress`] (a
//!   [`reqwest::dns::Resolve`]), address literals are checked before the request, and every
//!   redirect hop is checked ([`Egress::redirect_policy`]).
//! - `notify` e-mail and `sql`: the executor resolves the relay or database host through
//!   [`Egress::resolve`] and connects to a checked address; `sql` refuses Unix sockets unless
//!   `allow_unix_sockets` is set.
//! - `browser`: Chromium sends every request through a proxy of the worker's own
//!   ([`proxy`]), which resolves and checks each destination.
//!
//! A denied destination fails the step with `egress_denied` (not retryable) and one message,
//! whatever listens there; a connection that fails to an allowed destination reads
//! `cannot connect to HOST:PORT`, whether it was refused, reset or timed out.
//!
//! # Layout
//! - [`policy`]: [`EgressConfig`] (the settings), [`EgressPolicy`] (the decision) and
//!   [`EgressPolicies`] (the default one and those of namespaces).
//! - [`resolve`]: [`Egress`], the policy with a resolver, and its reqwest glue.
//! - [`proxy`]: the HTTP proxy the browser goes through.

pub mod policy;
pub mod proxy;
pub mod resolve;

use std::error::Error as _;
use std::sync::Arc;

pub use self::policy::{EgressConfig, EgressPolicies, EgressPolicy, is_private};
pub use self::resolve::{Egress, EgressDenied, Lookup, ResolveError, SystemLookup};
use crate::StepError;

impl Egress {
    /// A reqwest client builder that resolves through this policy and uses no proxy (a proxy
    /// would resolve names itself, out of the policy's sight). Set a redirect policy with
    /// [`Egress::redirect_policy`] or `Policy::none()`.
    pub fn http_client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(self.clone()))
            .no_proxy()
    }
}

/// A reqwest error that happened before a response: `egress_denied` when the policy refused a
/// destination (the first one or a redirect), or `code` (retryable) with `cannot connect to
/// HOST:PORT` when no connection could be made, however it failed; TLS failures keep their
/// detail. `None` for other errors, which the caller reports as it does.
pub(crate) fn reqwest_failure(
    err: &reqwest::Error,
    request_url: &reqwest::Url,
    code: &str,
) -> Option<StepError> {
    let url = err.url().unwrap_or(request_url);
    if let Some(denied) = Egress::denied_in(err, Some(url)) {
        return Some(denied.into_step_error());
    }
    if !err.is_connect() {
        return None;
    }
    let host = url.host_str().unwrap_or_default();
    let mut message = format!(
        "cannot connect to {}",
        resolve::destination(host, url.port_or_known_default())
    );
    let mut cause = err.source();
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            message.push_str(&format!(": tls: {tls}"));
            break;
        }
        cause = current.source();
    }
    Some(StepError::retryable(code, message))
}
