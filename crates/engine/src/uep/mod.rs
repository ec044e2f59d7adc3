//! The UEP's side of pooled engines: the loop that holds tasks and drives blocks
//! ([`engine`]), and the pool connections with their handshake ([`listener`]).

pub(crate) mod engine;
pub(crate) mod listener;
