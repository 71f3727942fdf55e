//! The debug spans of `Metrics` (feature `tracing`). Alone in its own test binary: tracing
//! caches per call site whether anyone listens, and tests on other threads without a
//! subscriber would race with the one installed here.

use std::fmt;
use std::sync::{Arc, Mutex};

use casstack::{ByteRange, Digest, Memory, Metrics, MetricsConfig, StoreExt};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::with_default;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::{Layer, Registry};

/// Every span opened, as `name store=.. key=..` text, and every recorded outcome.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut fields = Fields(attrs.metadata().name().to_owned());
        attrs.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }

    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut fields = Fields("record".to_owned());
        values.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[test]
fn every_operation_opens_a_debug_span_with_key_and_range() {
    let spans = Spans::default();
    let subscriber = Registry::default().with(spans.clone());
    with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = Metrics::new(Memory::default(), MetricsConfig { name: "cas".into() });
            let d = Digest::of(b"traced");
            store.put_bytes(d, "traced".into()).await.unwrap();
            store
                .get_range_bytes(d, ByteRange::new(1, Some(2)))
                .await
                .unwrap();
            store.has(d).await.unwrap();
        });
    });
    let spans = spans.0.lock().unwrap().clone();
    let d = Digest::of(b"traced");
    assert_eq!(spans.len(), 6, "{spans:#?}");
    assert_eq!(
        spans[0],
        format!("casstack.put store=cas key={d} size=Exact(6)")
    );
    assert_eq!(spans[1], "record outcome=ok");
    assert_eq!(
        spans[2],
        format!("casstack.get store=cas key={d} offset=1 len=2")
    );
    assert_eq!(spans[3], "record outcome=hit");
    assert_eq!(
        spans[4],
        format!("casstack.has store=cas keys=1 first_key={d}")
    );
    assert_eq!(spans[5], "record outcome=ok", "{spans:#?}");
}
