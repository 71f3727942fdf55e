//! Named futures shared by the routing wrappers: forward one child's future, or fail before
//! asking any child, without an `async` block of their own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;

use crate::body::Either;
use crate::error::{Error, Result};

/// A child's future, or an error found before any child was asked.
#[pin_project(project = CheckedProj)]
#[derive(Debug)]
pub(crate) enum Checked<F> {
    /// The request was refused (the error is taken when polled).
    Failed(Option<Error>),
    /// The child is working on it.
    Running(#[pin] F),
}

impl<F, T> Future for Checked<F>
where
    F: Future<Output = Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        match self.project() {
            CheckedProj::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("a Checked future is not polled after it completed"))),
            CheckedProj::Running(f) => f.poll(cx),
        }
    }
}

/// One of two children's futures with the same output, or an early error.
#[pin_project(project = RouteProj)]
#[derive(Debug)]
pub(crate) enum Route<A, B> {
    /// The request was refused.
    Failed(Option<Error>),
    /// The first child.
    Left(#[pin] A),
    /// The second child.
    Right(#[pin] B),
}

impl<A, B, T> Future for Route<A, B>
where
    A: Future<Output = Result<T>>,
    B: Future<Output = Result<T>>,
{
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        match self.project() {
            RouteProj::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("a Route future is not polled after it completed"))),
            RouteProj::Left(a) => a.poll(cx),
            RouteProj::Right(b) => b.poll(cx),
        }
    }
}

/// One of two children's `get` futures, its reader wrapped in [`Either`].
#[pin_project(project = RouteReaderProj)]
#[derive(Debug)]
pub(crate) enum RouteReader<A, B> {
    /// The request was refused.
    Failed(Option<Error>),
    /// The first child.
    Left(#[pin] A),
    /// The second child.
    Right(#[pin] B),
}

impl<A, B, RA, RB> Future for RouteReader<A, B>
where
    A: Future<Output = Result<RA>>,
    B: Future<Output = Result<RB>>,
{
    type Output = Result<Either<RA, RB>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouteReaderProj::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("a RouteReader future is not polled after it completed"))),
            RouteReaderProj::Left(a) => match a.poll(cx) {
                Poll::Ready(r) => Poll::Ready(r.map(Either::Left)),
                Poll::Pending => Poll::Pending,
            },
            RouteReaderProj::Right(b) => match b.poll(cx) {
                Poll::Ready(r) => Poll::Ready(r.map(Either::Right)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
