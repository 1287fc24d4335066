//! Request/answer over a bounded mailbox that refuses instead of waiting.
//!
//! `Addr::send` parks the caller while a mailbox is full; here a full mailbox
//! must be an answer (503 `overloaded`), so the request is sent with
//! `try_send` and carries its own reply channel.

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

pub async fn ask<A, R>(addr: &Addr<A>, request: R) -> Result<R::Answer, AskError<R>>
where
    R: Request,
    A: Actor + Handler<Ask<R>>,
    A::Context: ToEnvelope<A, Ask<R>>,
{
    let (reply, answer) = oneshot::channel();
    match addr.try_send(Ask { request, reply }) {
        Ok(()) => answer.await.map_err(|_| AskError::Dropped),
        Err(SendError::Full(ask)) => Err(AskError::Full(ask.request)),
        Err(SendError::Closed(ask)) => Err(AskError::Stopped(ask.request)),
    }
}
