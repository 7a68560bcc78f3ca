//! Whether the brokers answer, as this process's Kafka clients see it, and the client context
//! every rpaflow client shares.
//!
//! librdkafka reports a broker outage many times over: every client says that all brokers are
//! down, every reconnect attempt fails again, every commit and poll in between fails. An
//! operator wants one line when Kafka goes away and one when it is back, so the clients of a
//! process share one [`Connectivity`]: the first client that loses every broker logs the outage,
//! the first successful exchange after it logs the recovery with the outage's length, and the
//! failures in between go to the debug level.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, info, warn};

/// The process's view of the brokers.
#[derive(Debug, Default)]
pub struct Connectivity {
    /// Whether `down_since` is set: every message checks it, only outages take the lock.
    down: AtomicBool,
    /// When every broker stopped answering; `None` while they answer.
    down_since: Mutex<Option<Instant>>,
    /// The last error a client reported, for start-up messages.
    last_error: Mutex<Option<String>>,
    /// The last time a broker refused the credentials: said instead of the "all brokers down"
    /// that follows it.
    refusal: Mutex<Option<String>>,
}

/// The one [`Connectivity`] of this process.
pub fn connectivity() -> &'static Connectivity {
    static SHARED: OnceLock<Connectivity> = OnceLock::new();
    SHARED.get_or_init(Connectivity::default)
}

impl Connectivity {
    /// Whether the brokers were unreachable at the last report.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Every broker stopped answering: logged once per outage.
    pub fn lost(&self, reason: &str) {
        let mut down = self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if down.is_none() {
            *down = Some(Instant::now());
            self.down.store(true, Ordering::Relaxed);
            error!(
                reason,
                "kafka unreachable: no broker answers; dispatches, results and commits wait and \
                 are retried until one does"
            );
        } else {
            debug!(reason, "kafka still unreachable");
        }
    }

    /// A request succeeded: ends an outage, logging how long it lasted.
    pub fn ok(&self) {
        if !self.is_down() {
            return;
        }
        let mut down = self
            .down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(since) = down.take() {
            self.down.store(false, Ordering::Relaxed);
            info!(
                outage_ms = since.elapsed().as_millis() as u64,
                "kafka reachable again"
            );
        }
    }

    fn note(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    /// The last error a client reported, if any; a refusal of the credentials before any other.
    pub fn last_error(&self) -> Option<String> {
        let refusal = self
            .refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        refusal.or_else(|| {
            self.last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }
}

/// Whether `error` is the kind a broker outage causes (the connection, not the request).
pub(crate) fn is_transport(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::BrokerNotAvailable
        )
    )
}

/// Reports an error a consumer's poll returned. A consumer's client errors (all brokers down
/// among them) arrive this way rather than through [`ClientContext::error`].
pub(crate) fn poll_error(group: &str, error: &KafkaError) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
        connectivity().lost(&error.to_string());
    } else if is_transport(error) || connectivity().is_down() {
        debug!(group, error = %error, "kafka poll failed");
    } else {
        warn!(group, error = %error, "kafka poll failed");
    }
}

/// The context of every rpaflow Kafka client: librdkafka's logs and errors through `tracing`,
/// outages through [`Connectivity`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientHealth;

impl ClientContext for ClientHealth {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            // Failed connections are reported through `error` as well; while Kafka is away each
            // reconnect attempt would log again.
            _ if facility == "FAIL" || connectivity().is_down() => {
                debug!(facility, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => warn!(facility, "librdkafka: {message}"),
            _ => debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let shared = connectivity();
        shared.note(reason.to_owned());
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => shared.lost(reason),
            _ if is_transport(&error) => debug!(error = %error, "kafka connection: {reason}"),
            Some(RDKafkaErrorCode::Authentication) => {
                *shared
                    .refusal
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
                error!(error = %error, "kafka refused authentication: {reason}");
            }
            _ => warn!(error = %error, "kafka client error: {reason}"),
        }
    }
}

impl ConsumerContext for ClientHealth {}

/// Deliveries are awaited where they are produced; nothing to do per message here.
impl ProducerContext for ClientHealth {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, (): Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_state_change_and_recovery_ends_it() {
        let view = Connectivity::default();
        assert!(!view.is_down());
        view.ok();
        view.lost("1/1 brokers are down");
        view.lost("1/1 brokers are down");
        assert!(view.is_down());
        view.ok();
        assert!(!view.is_down());
    }

    #[test]
    fn transport_errors_are_told_from_request_errors() {
        assert!(is_transport(&KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(is_transport(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_transport(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
    }
}
