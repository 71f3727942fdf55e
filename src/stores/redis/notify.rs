//! Removal notifications from Redis keyspace events (`notify-keyspace-events`).
//!
//! With `E` (keyevent channels) the task subscribes to `__keyevent@<db>__:evicted`,
//! `:expired` and `:del`, as far as the server's flags enable them; with only `K` it
//! pattern-subscribes to `__keyspace@<db>__:<prefix>*`. Keys outside the prefix and temporary
//! upload keys are ignored. The task reconnects with backoff when the server goes away, and
//! stops when the last handle of the store is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::redis::{self, aio::PubSub};
use futures_util::StreamExt as _;

use super::conn::Connector;
use super::keys;
use crate::store::RemovalListener;

/// Listeners, and whether a subscription is live.
#[derive(Default)]
pub(crate) struct Removals {
    listeners: Mutex<Vec<Arc<dyn RemovalListener>>>,
    active: AtomicBool,
    /// A live subscription hears both expiry and eviction.
    complete: AtomicBool,
}

impl Removals {
    pub(crate) fn subscribe(&self, listener: Arc<dyn RemovalListener>) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// Records whether `subscription` (if any) is live, and whether it hears every removal.
    pub(crate) fn set_live(&self, subscription: Option<&Subscription>) {
        self.active.store(subscription.is_some(), Ordering::SeqCst);
        self.complete
            .store(subscription.is_some_and(|s| s.complete), Ordering::SeqCst);
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// Tells every listener that removals may have gone unheard.
    fn missed(&self) {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for listener in &listeners {
            listener.removals_missed();
        }
    }

    fn notify(&self, prefix: &str, raw: &[u8]) {
        let removed = keys::decode(prefix, raw);
        if removed.is_empty() {
            return;
        }
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for key in &removed {
            for listener in &listeners {
                listener.removed(key);
            }
        }
    }
}

/// What the server's `notify-keyspace-events` flags let us hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Events {
    keyevent: bool,
    keyspace: bool,
    expired: bool,
    evicted: bool,
    del: bool,
}

impl Events {
    pub(crate) fn parse(flags: &str) -> Events {
        let all = flags.contains('A');
        Events {
            keyevent: flags.contains('E'),
            keyspace: flags.contains('K'),
            expired: all || flags.contains('x'),
            evicted: all || flags.contains('e'),
            del: all || flags.contains('g'),
        }
    }

    /// True if removals can be heard at all (expiry or eviction on some channel).
    pub(crate) fn useful(&self) -> bool {
        (self.keyevent || self.keyspace) && (self.expired || self.evicted)
    }
}

/// A live subscription.
pub(crate) struct Subscription {
    pubsub: PubSub,
    keyspace_prefix: Option<Vec<u8>>,
    /// Both expiry and eviction are heard.
    complete: bool,
}

/// Reads the server's flags and subscribes; `Ok(None)` if notifications are off (or `CONFIG`
/// is not allowed).
pub(crate) async fn subscribe(
    connector: &Connector,
    prefix: &str,
) -> crate::Result<Option<Subscription>> {
    let db = connector.client.get_connection_info().redis_settings().db();
    let flags = {
        let mut conn = connector.get().await?;
        let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut **conn)
            .await;
        match reply {
            Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
            Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                return Err(connector.error(e, "redis: reading notify-keyspace-events"));
            }
            // CONFIG renamed or forbidden: no notifications.
            Err(_) => return Ok(None),
        }
    };
    let events = Events::parse(&flags);
    if !events.useful() {
        return Ok(None);
    }
    let mut pubsub = tokio::time::timeout(
        connector.connection_timeout,
        connector.client.get_async_pubsub(),
    )
    .await
    .map_err(|_| {
        crate::Error::new(
            crate::Code::Unavailable,
            "redis: no pub/sub connection in time",
        )
    })?
    .map_err(|e| connector.error(e, "redis: opening the pub/sub connection"))?;
    let mut keyspace_prefix = None;
    let result = if events.keyevent {
        let mut channels = Vec::new();
        for (on, name) in [
            (events.expired, "expired"),
            (events.evicted, "evicted"),
            (events.del, "del"),
        ] {
            if on {
                channels.push(format!("__keyevent@{db}__:{name}"));
            }
        }
        pubsub.subscribe(channels).await
    } else {
        let channel = format!("__keyspace@{db}__:");
        keyspace_prefix = Some(channel.clone().into_bytes());
        pubsub
            .psubscribe(format!("{channel}{}*", glob_escape(prefix)))
            .await
    };
    result.map_err(|e| connector.error(e, "redis: subscribing to keyspace events"))?;
    Ok(Some(Subscription {
        pubsub,
        keyspace_prefix,
        complete: events.expired && events.evicted,
    }))
}

/// Delivers events until the subscription breaks, then resubscribes with backoff (and
/// rechecks the server's flags every 10 s while they are off). Runs until aborted.
///
/// `first` is the subscription made by `connect` (before any listener could subscribe). Every
/// later one follows a time in which removals went unheard, so listeners are told
/// [`removals_missed`](RemovalListener::removals_missed) once it is live, before the store
/// says it reports removals again.
pub(crate) async fn run(
    connector: Arc<Connector>,
    prefix: String,
    removals: Arc<Removals>,
    first: Option<Subscription>,
) {
    let mut failures = 0u32;
    let mut live = first;
    loop {
        if let Some(subscription) = live.take() {
            failures = 0;
            removals.set_live(Some(&subscription));
            deliver(subscription, &prefix, &removals).await;
            removals.set_live(None);
        }
        let wait = match subscribe(&connector, &prefix).await {
            Ok(Some(subscription)) => {
                // Subscribed, so nothing from now on goes unheard: drop what was learnt
                // during the gap, then report removals again.
                removals.missed();
                live = Some(subscription);
                continue;
            }
            Ok(None) => Duration::from_secs(10),
            Err(_) => {
                failures = failures.saturating_add(1);
                connector
                    .retry
                    .backoff(failures, fastrand::f64())
                    .min(Duration::from_secs(5))
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn deliver(subscription: Subscription, prefix: &str, removals: &Removals) {
    let Subscription {
        pubsub,
        keyspace_prefix,
        ..
    } = subscription;
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        match &keyspace_prefix {
            None => removals.notify(prefix, message.get_payload_bytes()),
            Some(channel_prefix) => {
                let event = message.get_payload_bytes();
                if !matches!(event, b"expired" | b"evicted" | b"del") {
                    continue;
                }
                let Ok(channel) = message.get_channel::<Vec<u8>>() else {
                    continue;
                };
                if let Some(key) = channel.strip_prefix(channel_prefix.as_slice()) {
                    removals.notify(prefix, key);
                }
            }
        }
    }
}

/// `prefix` with Redis glob characters escaped.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_decide_what_is_heard() {
        assert!(Events::parse("Exe").useful());
        assert!(Events::parse("xeE").useful());
        assert!(Events::parse("KA").useful());
        assert!(!Events::parse("").useful());
        assert!(!Events::parse("E").useful(), "no event class");
        assert!(!Events::parse("xe").useful(), "no channel class");
        assert!(
            !Events::parse("Eg").useful(),
            "del alone does not cover eviction"
        );
        assert!(Events::parse("AE").del);
        assert!(!Events::parse("Exe").del);
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
