//! One error type for every store and wrapper.

use std::borrow::Cow;
use std::fmt;
use std::io;

use crate::key::Key;

/// `Result` with casstack's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is. The names follow gRPC status codes, so they map one
/// to one onto the Remote Execution API.
///
/// ```
/// use casstack::{Code, Error};
/// let e = Error::new(Code::Unavailable, "redis is down");
/// assert!(e.code().is_retryable());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// The key is not in the store.
    NotFound,
    /// The caller sent something wrong: a hash or size mismatch on `put`, a name key given to a
    /// digest-only store, a malformed digest.
    InvalidArgument,
    /// Stored data is corrupt or truncated: a hash mismatch on `get`, a damaged file.
    DataLoss,
    /// A byte range starts past the end of the object.
    OutOfRange,
    /// The object already exists and the operation does not replace.
    AlreadyExists,
    /// A backend is unreachable or failed transiently; retrying may succeed.
    Unavailable,
    /// A limit was hit: the object can never fit, a disk is full, a quota is spent.
    ResourceExhausted,
    /// The process may not read or write something it needs.
    PermissionDenied,
    /// An operation took too long.
    DeadlineExceeded,
    /// The operation was abandoned, for example a stream cut short by its sender.
    Aborted,
    /// The store does not do this, or the cargo feature it needs is off.
    Unimplemented,
    /// A bug or broken invariant inside the store.
    Internal,
}

impl Code {
    /// True for codes that describe a transient condition, worth a retry with backoff.
    ///
    /// ```
    /// assert!(!casstack::Code::InvalidArgument.is_retryable());
    /// ```
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The error of every store operation: a [`Code`], a message, the key concerned and the
/// underlying cause.
///
/// One pointer wide, so `Result<T>` stays small in every future that carries one.
///
/// ```
/// use casstack::{Code, Digest, Error};
///
/// let e = Error::new(Code::DataLoss, "hash mismatch").with_key(Digest::EMPTY);
/// assert_eq!(e.code(), Code::DataLoss);
/// assert!(e.to_string().starts_with("DataLoss: hash mismatch (e3b0c442"));
/// ```
pub struct Error(Box<Inner>);

struct Inner {
    code: Code,
    message: Cow<'static, str>,
    key: Option<Key>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error with a code and a message.
    ///
    /// ```
    /// let e = casstack::Error::new(casstack::Code::Internal, "oops");
    /// assert_eq!(e.message(), "oops");
    /// ```
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        Error(Box::new(Inner {
            code,
            message: message.into(),
            key: None,
            source: None,
        }))
    }

    /// `NotFound` for `key`.
    ///
    /// ```
    /// let e = casstack::Error::not_found(casstack::Key::from("x"));
    /// assert_eq!(e.code(), casstack::Code::NotFound);
    /// ```
    pub fn not_found(key: Key) -> Self {
        Error::new(Code::NotFound, "not found").with_key(key)
    }

    /// Attaches the key the error is about.
    ///
    /// ```
    /// let e = casstack::Error::new(casstack::Code::Internal, "x").with_key("k");
    /// assert_eq!(e.key().unwrap().name(), Some("k"));
    /// ```
    pub fn with_key(mut self, key: impl Into<Key>) -> Self {
        self.0.key = Some(key.into());
        self
    }

    /// Attaches the underlying cause.
    ///
    /// ```
    /// let io = std::io::Error::other("disk");
    /// let e = casstack::Error::new(casstack::Code::Internal, "write").with_source(io);
    /// assert!(std::error::Error::source(&e).is_some());
    /// ```
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// Puts `context` in front of the message, keeping code, key and source.
    ///
    /// ```
    /// let e = casstack::Error::new(casstack::Code::Internal, "eof").context("reading chunk 3");
    /// assert_eq!(e.message(), "reading chunk 3: eof");
    /// ```
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.0.message = format!("{context}: {}", self.0.message).into();
        self
    }

    /// The code.
    ///
    /// ```
    /// assert_eq!(casstack::Error::not_found("k".into()).code(), casstack::Code::NotFound);
    /// ```
    pub fn code(&self) -> Code {
        self.0.code
    }

    /// The message, without code, key or source.
    ///
    /// ```
    /// assert_eq!(casstack::Error::not_found("k".into()).message(), "not found");
    /// ```
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The key the error is about, if known.
    ///
    /// ```
    /// assert!(casstack::Error::not_found("k".into()).key().is_some());
    /// ```
    pub fn key(&self) -> Option<&Key> {
        self.0.key.as_ref()
    }

    /// True if retrying the same operation may succeed ([`Code::is_retryable`]).
    ///
    /// ```
    /// assert!(!casstack::Error::not_found("k".into()).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.0.code.is_retryable()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.message)?;
        if let Some(key) = &self.0.key {
            write!(f, " ({key})")?;
        }
        if let Some(source) = &self.0.source {
            write!(f, ", source: {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        f.debug_struct("Error")
            .field("code", &self.0.code)
            .field("message", &self.0.message)
            .field("key", &self.0.key)
            .field("source", &self.0.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    /// Maps the I/O error kind onto a [`Code`] and keeps the error as the source.
    fn from(e: io::Error) -> Self {
        use io::ErrorKind as K;
        let code = match e.kind() {
            K::NotFound => Code::NotFound,
            K::PermissionDenied | K::ReadOnlyFilesystem => Code::PermissionDenied,
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe => Code::Unavailable,
            K::AlreadyExists => Code::AlreadyExists,
            K::InvalidInput | K::InvalidData => Code::InvalidArgument,
            K::TimedOut => Code::DeadlineExceeded,
            K::Interrupted | K::UnexpectedEof => Code::Aborted,
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge | K::OutOfMemory => {
                Code::ResourceExhausted
            }
            _ => Code::Internal,
        };
        let message = e.to_string();
        Error::new(code, message).with_source(e)
    }
}

/// Adds context to the error of a `Result`, as NativeLink's `err_tip` does.
///
/// ```
/// use casstack::{Code, Error, ResultExt};
///
/// let r: casstack::Result<()> = Err(Error::new(Code::Internal, "eof"));
/// let e = r.context("reading the index").unwrap_err();
/// assert_eq!(e.message(), "reading the index: eof");
/// ```
pub trait ResultExt<T> {
    /// Puts `context` in front of the error message.
    fn context(self, context: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_one_pointer() {
        assert_eq!(size_of::<Error>(), size_of::<usize>());
        assert_eq!(size_of::<Result<()>>(), size_of::<usize>());
    }

    #[test]
    fn io_errors_map_to_codes() {
        let full: Error = io::Error::from(io::ErrorKind::StorageFull).into();
        assert_eq!(full.code(), Code::ResourceExhausted);
        let gone: Error = io::Error::from(io::ErrorKind::NotFound).into();
        assert_eq!(gone.code(), Code::NotFound);
        let refused: Error = io::Error::from(io::ErrorKind::ConnectionRefused).into();
        assert!(refused.is_retryable());
    }

    #[test]
    fn display_is_one_line_with_key_and_source() {
        let e = Error::new(Code::Unavailable, "connect")
            .with_key("k")
            .with_source(io::Error::other("refused"));
        assert_eq!(e.to_string(), "Unavailable: connect (k), source: refused");
        assert!(!format!("{e:#?}").is_empty());
    }
}
