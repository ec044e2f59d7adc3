//! The service's logs: what `GANTRY_LOG` selects, and never a message body.
//!
//! Task payloads and results are users' data, and messages carry credentials (a start
//! command holds a UEP's broker password), so no log may hold one. The service's own
//! events name ids, never bodies. lapin, the AMQP client, is the exception this module
//! exists for: it logs a message the broker returned (unroutable) with its whole body at
//! WARN, and every frame at TRACE. Its events (and amq-protocol's) pass only at ERROR,
//! whatever `GANTRY_LOG` asks for; the service reports broker failures itself, from the
//! errors lapin returns.
//!
//! ```
//! use tracing_subscriber::layer::SubscriberExt;
//! let layer = gantry_service::logging::layer(Some("debug"), std::io::stderr).unwrap();
//! let subscriber = tracing_subscriber::registry().with(layer);
//! # drop(subscriber);
//! ```

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterExt, ParseError, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// What the service logs when `GANTRY_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn";

/// Crates whose events can carry a message body (see the module documentation).
const BODY_TARGETS: [&str; 2] = ["lapin", "amq_protocol"];

/// Whether an event or span may reach the log at all: those of [`BODY_TARGETS`] only
/// at ERROR.
pub fn may_log(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    let from_body_target = BODY_TARGETS.iter().any(|crate_name| {
        target
            .strip_prefix(crate_name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !from_body_target || *metadata.level() == Level::ERROR
}

/// The service's log layer: formatted lines to `writer`, selected by `spec` (an
/// `EnvFilter` directive list such as `GANTRY_LOG=debug`; [`DEFAULT_FILTER`] when
/// `None`) and by [`may_log`], which no directive overrides.
pub fn layer<S, W>(spec: Option<&str>, writer: W) -> Result<impl Layer<S>, ParseError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let selected = EnvFilter::try_new(spec.unwrap_or(DEFAULT_FILTER))?;
    Ok(tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_filter(filter_fn(may_log).and(selected)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_amqp_client_logs_only_errors() {
        use tracing::callsite::Identifier;
        use tracing::metadata::Kind;
        struct Site;
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!("only the identifier is used")
            }
        }
        static SITE: Site = Site;
        let event = |target: &'static str, level: Level| {
            Metadata::new(
                "event",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], Identifier(&SITE)),
                Kind::EVENT,
            )
        };
        assert!(!may_log(&event("lapin::returned_messages", Level::WARN)));
        assert!(!may_log(&event("lapin", Level::TRACE)));
        assert!(!may_log(&event("amq_protocol::frame", Level::DEBUG)));
        assert!(may_log(&event("lapin::channel", Level::ERROR)));
        assert!(may_log(&event("gantry_service::consumers", Level::TRACE)));
        assert!(may_log(&event("lapinous", Level::WARN)));
    }
}
