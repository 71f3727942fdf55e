//! proptest strategies for blobs, keys and operation sequences.

use std::fmt;

use bytes::Bytes;
use proptest::prelude::*;

use crate::key::{Digest, Key};
use crate::store::ByteRange;

/// A blob described by its length, content kind and seed, so failing cases print short and
/// shrink well; [`BlobSpec::bytes`] makes the content.
///
/// ```
/// use casstack::testing::{BlobSpec, Content};
/// let blob = BlobSpec { len: 100, content: Content::Text, seed: 1 };
/// assert_eq!(blob.bytes().len(), 100);
/// assert_eq!(blob.bytes(), blob.bytes(), "deterministic");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobSpec {
    /// Length in bytes.
    pub len: usize,
    /// What the bytes look like.
    pub content: Content,
    /// Varies the bytes of blobs of the same length and kind.
    pub seed: u64,
}

/// What a generated blob's bytes look like: compressors and chunkers behave differently on
/// each.
///
/// ```
/// let kind = casstack::testing::Content::Random;
/// # let _ = kind;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// Incompressible pseudo-random bytes.
    Random,
    /// Word-like text: compresses about 2-3x.
    Text,
    /// One byte repeated: compresses to almost nothing.
    Repeated,
}

impl BlobSpec {
    /// The blob's bytes (deterministic in the spec).
    ///
    /// ```
    /// let spec = casstack::testing::BlobSpec { len: 3, content: casstack::testing::Content::Repeated, seed: 0 };
    /// assert_eq!(spec.bytes().len(), 3);
    /// ```
    pub fn bytes(&self) -> Bytes {
        let mut state = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let data: Vec<u8> = match self.content {
            Content::Random => (0..self.len).map(|_| next() as u8).collect(),
            Content::Repeated => vec![(self.seed % 251) as u8; self.len],
            Content::Text => {
                const WORDS: [&[u8]; 8] = [
                    b"cache ", b"digest ", b"store ", b"blob ", b"build ", b"action ", b"remote ",
                    b"tier ",
                ];
                let mut out = Vec::with_capacity(self.len + 8);
                while out.len() < self.len {
                    out.extend_from_slice(WORDS[(next() % 8) as usize]);
                }
                out.truncate(self.len);
                out
            }
        };
        Bytes::from(data)
    }
}

impl fmt::Debug for BlobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}({} bytes, seed {})",
            self.content, self.len, self.seed
        )
    }
}

/// Blobs up to `max_len` bytes, with the edge sizes (0, 1) and small sizes over-represented.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// let mut runner = proptest::test_runner::TestRunner::default();
/// let spec = casstack::testing::blob(100).new_tree(&mut runner).unwrap().current();
/// assert!(spec.len <= 100);
/// ```
pub fn blob(max_len: usize) -> impl Strategy<Value = BlobSpec> + Clone {
    let len = prop_oneof![
        1 => Just(0usize),
        1 => Just(1usize),
        3 => 0..=max_len.min(64),
        5 => 0..=max_len,
    ];
    let content = prop_oneof![
        Just(Content::Random),
        Just(Content::Text),
        Just(Content::Repeated)
    ];
    (len, content, any::<u64>()).prop_map(|(len, content, seed)| BlobSpec { len, content, seed })
}

/// Digest keys of arbitrary (not stored) content: for probing absent keys.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// let mut runner = proptest::test_runner::TestRunner::default();
/// let key = casstack::testing::digest_key().new_tree(&mut runner).unwrap().current();
/// assert!(key.digest().is_some());
/// ```
pub fn digest_key() -> impl Strategy<Value = Key> + Clone {
    (any::<[u8; 32]>(), 0u64..1 << 20).prop_map(|(hash, size)| Key::from(Digest::new(hash, size)))
}

/// Name keys from a small alphabet, so sequences revisit the same names.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// let mut runner = proptest::test_runner::TestRunner::default();
/// let key = casstack::testing::name_key().new_tree(&mut runner).unwrap().current();
/// assert!(key.name().is_some());
/// ```
pub fn name_key() -> impl Strategy<Value = Key> + Clone {
    "[a-c]{1,2}(/[a-c])?".prop_map(Key::from)
}

/// A byte range relative to blobs up to `max_len` bytes, sometimes past their end.
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// let mut runner = proptest::test_runner::TestRunner::default();
/// let r = casstack::testing::byte_range(10).new_tree(&mut runner).unwrap().current();
/// assert!(r.offset <= 12);
/// ```
pub fn byte_range(max_len: usize) -> impl Strategy<Value = ByteRange> + Clone {
    let max = max_len as u64 + 2;
    prop_oneof![
        2 => Just(ByteRange::FULL),
        3 => (0..=max, proptest::option::of(0..=max))
            .prop_map(|(offset, len)| ByteRange::new(offset, len)),
    ]
}

/// One step of a conformance sequence. Keys are indexes into the case's key table: digest
/// keys `0..blobs` (key `i` is the digest of blob `i`), then name keys.
///
/// ```
/// let op = casstack::testing::Op::Has { keys: vec![0, 1] };
/// # let _ = op;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store a blob under a key, in chunks of `chunk` bytes; `exact` declares the exact size,
    /// otherwise an upper bound.
    Put {
        /// Key index.
        key: usize,
        /// Blob index (for digest keys, always the key's own blob).
        blob: usize,
        /// Chunk size of the body.
        chunk: usize,
        /// Declare `UploadSize::Exact` (else `AtMost` a bit above).
        exact: bool,
    },
    /// A put whose body fails: it must return an error and change nothing.
    BadPut {
        /// Key index.
        key: usize,
        /// Blob index.
        blob: usize,
        /// How the body fails.
        fault: BodyFault,
    },
    /// Read a range of a key.
    Get {
        /// Key index.
        key: usize,
        /// The range.
        range: ByteRange,
    },
    /// Ask the sizes of several keys in one call.
    Has {
        /// Key indexes.
        keys: Vec<usize>,
    },
    /// Run these steps at the same time.
    Concurrent(Vec<Op>),
    /// Close the store and open it again (only with a reopen function).
    Reopen,
}

/// How a [`Op::BadPut`] body misbehaves.
///
/// ```
/// let fault = casstack::testing::BodyFault::ErrorAfter(10);
/// # let _ = fault;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFault {
    /// Yields this many bytes, then an error.
    ErrorAfter(usize),
    /// Ends after this many bytes while the declared exact size is the whole blob.
    EndsShort(usize),
    /// Yields the blob plus extra bytes beyond the declared exact size.
    TooLong,
    /// Yields this many bytes, then never finishes: the put future is dropped.
    Abandoned(usize),
}

/// The shape of a generated case: the blobs, how many name keys, and the steps.
///
/// ```
/// use casstack::testing::{Case, BlobSpec, Content, Op};
/// let case = Case {
///     blobs: vec![BlobSpec { len: 4, content: Content::Random, seed: 3 }],
///     names: 0,
///     ops: vec![Op::Has { keys: vec![0] }],
/// };
/// assert_eq!(case.keys().len(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct Case {
    /// The blobs; blob `i` is also the content of digest key `i`.
    pub blobs: Vec<BlobSpec>,
    /// How many name keys follow the digest keys.
    pub names: usize,
    /// The steps.
    pub ops: Vec<Op>,
}

impl Case {
    /// The key table: the digests of the blobs, then `names` name keys.
    ///
    /// ```
    /// # use casstack::testing::Case;
    /// let case = Case { blobs: vec![], names: 2, ops: vec![] };
    /// assert_eq!(case.keys()[1].name(), Some("name-1"));
    /// ```
    pub fn keys(&self) -> Vec<Key> {
        let digests = self.blobs.iter().map(|b| Key::from(Digest::of(&b.bytes())));
        let names = (0..self.names).map(|i| Key::from(format!("name-{i}")));
        digests.chain(names).collect()
    }
}

/// What the generated sequences may contain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) max_blob: usize,
    pub(crate) name_keys: bool,
    pub(crate) reopen: bool,
    pub(crate) concurrent: bool,
    pub(crate) max_ops: usize,
}

/// Sequences of steps over a few blobs and names.
pub(crate) fn case(shape: Shape) -> impl Strategy<Value = Case> {
    let names = if shape.name_keys { 3 } else { 0 };
    proptest::collection::vec(blob(shape.max_blob), 1..=5).prop_flat_map(move |blobs| {
        let n_blobs = blobs.len();
        let n_keys = n_blobs + names;
        let ops = proptest::collection::vec(op(shape, n_blobs, n_keys), 1..=shape.max_ops);
        (Just(blobs), ops).prop_map(move |(blobs, ops)| Case { blobs, names, ops })
    })
}

fn simple_op(shape: Shape, n_blobs: usize, n_keys: usize) -> impl Strategy<Value = Op> + Clone {
    let max_chunk = shape.max_blob.max(1);
    prop_oneof![
        4 => (0..n_keys, 0..n_blobs, 1..=max_chunk, any::<bool>())
            .prop_map(|(key, blob, chunk, exact)| Op::Put { key, blob, chunk, exact }),
        4 => (0..n_keys, byte_range(shape.max_blob)).prop_map(|(key, range)| Op::Get { key, range }),
        2 => proptest::collection::vec(0..n_keys, 0..=6).prop_map(|keys| Op::Has { keys }),
    ]
}

fn op(shape: Shape, n_blobs: usize, n_keys: usize) -> impl Strategy<Value = Op> {
    let fault = prop_oneof![
        (0..=shape.max_blob).prop_map(BodyFault::ErrorAfter),
        (0..=shape.max_blob).prop_map(BodyFault::EndsShort),
        Just(BodyFault::TooLong),
        (0..=shape.max_blob).prop_map(BodyFault::Abandoned),
    ];
    let bad_put = (0..n_keys, 0..n_blobs, fault).prop_map(|(key, blob, fault)| Op::BadPut {
        key,
        blob,
        fault,
    });
    let mut options: Vec<(u32, BoxedStrategy<Op>)> = vec![
        (10, simple_op(shape, n_blobs, n_keys).boxed()),
        (2, bad_put.boxed()),
    ];
    if shape.concurrent {
        let group = proptest::collection::vec(simple_op(shape, n_blobs, n_keys), 2..=8)
            .prop_map(Op::Concurrent);
        options.push((2, group.boxed()));
    }
    if shape.reopen {
        options.push((1, Just(Op::Reopen).boxed()));
    }
    proptest::strategy::Union::new_weighted(options)
}
