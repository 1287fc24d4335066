//! Request/answer over a bounded mailbox that refuses instead of waiting.
//!
//! actix's own mailbox bound is per sender (every `Addr` clone may queue one
//! message past it, and `send` parks the caller), so it does not bound what
//! many callers queue together. `Bounded` counts the requests in flight to
//! one actor, queued or being handled, and refuses past its capacity: a full
//! mailbox is an answer (503 `overloaded`), never unbounded memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use tokio::sync::oneshot;

pub trait Request: Send + 'static {
    type Answer: Send + 'static;
}

/// The message an actor handles for request `R`; answer through `reply`.
pub struct Ask<R: Request> {
    pub request: R,
    pub reply: oneshot::Sender<R::Answer>,
    /// The asker's span: an actor does not run in its caller's context, so
    /// the handler enters this one to keep one request's log lines together
    /// (a webhook's `event_id` and `org_id`, from route to write).
    pub span: tracing::Span,
}

impl<R: Request> Message for Ask<R> {
    type Result = ();
}

#[derive(Debug)]
pub enum AskError<R> {
    /// The mailbox is full; the request comes back untouched.
    Full(R),
    /// The actor has stopped; the request comes back untouched.
    Stopped(R),
    /// The actor stopped after taking the request, without answering.
    Dropped,
}

/// An actor's address with a cap on requests in flight.
pub struct Bounded<A: Actor> {
    addr: Addr<A>,
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
}

impl<A: Actor> Clone for Bounded<A> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            in_flight: self.in_flight.clone(),
            capacity: self.capacity,
        }
    }
}

/// Frees a slot when the request is answered, fails, or is abandoned.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<A: Actor> Bounded<A> {
    pub fn new(addr: Addr<A>, capacity: usize) -> Self {
        Self {
            addr,
            in_flight: Arc::new(AtomicUsize::new(0)),
            capacity: capacity.max(1),
        }
    }

    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    pub fn connected(&self) -> bool {
        self.addr.connected()
    }

    /// Sends `request` and waits for the answer, or refuses at once when
    /// `capacity` requests are already in flight.
    pub async fn ask<R>(&self, request: R) -> Result<R::Answer, AskError<R>>
    where
        R: Request,
        A: Handler<Ask<R>>,
        A::Context: ToEnvelope<A, Ask<R>>,
    {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(AskError::Full(request));
        }
        let _slot = Slot(&self.in_flight);
        let (reply, answer) = oneshot::channel();
        // do_send: the admission above is the bound; actix's per-sender one
        // would let every clone of the address through anyway.
        if !self.addr.connected() {
            return Err(AskError::Stopped(request));
        }
        self.addr.do_send(Ask {
            request,
            reply,
            span: tracing::Span::current(),
        });
        answer.await.map_err(|_| AskError::Dropped)
    }
}
