//! [`FastSlowConfig`] and [`StoreDirection`].

use serde::{Deserialize, Serialize};

/// Which operations write a tier (NativeLink's `StoreDirection`).
///
/// Reads *from* the fast tier happen whatever its direction; the direction only decides
/// whether uploads write it and whether reads that missed it fill it. For the slow tier only
/// the upload half matters.
///
/// ```
/// use casstack::StoreDirection;
/// assert!(StoreDirection::Both.takes_updates() && StoreDirection::Both.takes_fills());
/// assert!(!StoreDirection::ReadOnly.takes_updates());
/// let d: StoreDirection = serde::Deserialize::deserialize(
///     serde::de::value::StrDeserializer::<serde::de::value::Error>::new("read_only"),
/// ).unwrap();
/// assert_eq!(d, StoreDirection::ReadOnly);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreDirection {
    /// Uploads write the tier and reads fill it. The default.
    #[default]
    Both,
    /// Uploads write the tier; reads never fill it.
    Update,
    /// Uploads skip the tier; reads fill it.
    Get,
    /// Neither: the tier is only read.
    ReadOnly,
}

impl StoreDirection {
    /// True if uploads write the tier (`Both`, `Update`).
    ///
    /// ```
    /// assert!(casstack::StoreDirection::Update.takes_updates());
    /// ```
    pub fn takes_updates(self) -> bool {
        matches!(self, StoreDirection::Both | StoreDirection::Update)
    }

    /// True if reads that missed the tier fill it (`Both`, `Get`).
    ///
    /// ```
    /// assert!(casstack::StoreDirection::Get.takes_fills());
    /// ```
    pub fn takes_fills(self) -> bool {
        matches!(self, StoreDirection::Both | StoreDirection::Get)
    }
}

/// Settings of a [`FastSlow`](super::FastSlow) store. Field names follow NativeLink's
/// `fast_slow` spec.
///
/// ```
/// use casstack::{FastSlowConfig, StoreDirection};
/// let config = FastSlowConfig {
///     fast_direction: StoreDirection::Get,
///     bypass_dedup_threshold_bytes: 64 << 20,
///     ..Default::default()
/// };
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FastSlowConfig {
    /// Whether uploads write the fast tier and reads fill it. Default: `both`.
    pub fast_direction: StoreDirection,
    /// Whether uploads write the slow tier. Default: `both`.
    pub slow_direction: StoreDirection,
    /// Reads of digests at least this large go straight to the slow tier: no fill of the
    /// fast tier, no sharing of concurrent reads (a multi-GB blob would evict many small
    /// useful ones, NativeLink #2415). 0, the default, turns the bypass off.
    #[serde(deserialize_with = "crate::spec::bytes")]
    pub bypass_dedup_threshold_bytes: u64,
}
