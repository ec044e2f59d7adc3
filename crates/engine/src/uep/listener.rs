//! The UEP's side of pool connections: the handshake with each connecting peer, and
//! the tasks that then carry frames between the socket and the engine's loop.
//!
//! A peer that cannot prove it holds the secret is refused and logged with its address;
//! it never reaches the engine. One that can is announced to the engine, which decides
//! whether it is a block it is waiting for (only then does the pool get its welcome).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::auth::{Role, Secret, Transcript, nonce};
use crate::limits;
use crate::provider::BlockId;
use crate::wire::{FromPool, PROTOCOL_VERSION, PoolConfig, ToPool, read_frame, write_frame};

/// What the connection tasks tell the engine's loop.
pub(crate) enum PoolEvent {
    /// A peer proved it holds the secret and claims `block`. The engine answers on
    /// `decision` with the pool's configuration, or why it is not welcome; frames for the
    /// pool go into `sender`.
    Authenticated {
        block: BlockId,
        peer: SocketAddr,
        sender: mpsc::Sender<ToPool>,
        decision: oneshot::Sender<Result<PoolConfig, String>>,
    },
    /// A frame from a welcomed pool.
    Message { block: BlockId, message: FromPool },
    /// A welcomed pool's connection ended.
    Disconnected { block: BlockId, reason: String },
}

/// What the handshake needs to know.
pub(crate) struct Identity {
    pub uep_id: Uuid,
    pub secret: Secret,
}

/// Serves one accepted connection to its end. `_permit` bounds the handshakes in
/// progress and is released once the peer is authenticated.
pub(crate) async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    identity: Arc<Identity>,
    engine: mpsc::Sender<PoolEvent>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(
        limits::HANDSHAKE_TIMEOUT,
        authenticate(&mut stream, &identity),
    )
    .await;
    let (block, uep_proof) = match handshake {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(reason)) => {
            tracing::warn!(%peer, reason, "refused a worker pool connection");
            // Best effort: a real pool with a stale secret learns why; anyone else
            // learns nothing they did not know.
            let refused = ToPool::Refused { reason };
            let _ = tokio::time::timeout(
                limits::HANDSHAKE_TIMEOUT,
                write_frame(&mut stream, &refused),
            )
            .await;
            return;
        }
        Err(_) => {
            tracing::warn!(
                %peer,
                waited_s = limits::HANDSHAKE_TIMEOUT.as_secs(),
                "refused a worker pool connection: no handshake in time"
            );
            return;
        }
    };
    drop(permit);

    // Frames queue here until the welcome is written; the engine sends tasks only after
    // the pool reported ready, and never more than its slots.
    let (sender, mut to_pool) = mpsc::channel::<ToPool>(limits::CONNECTION_QUEUE);
    let (decision_tx, decision) = oneshot::channel();
    let announced = engine
        .send(PoolEvent::Authenticated {
            block,
            peer,
            sender,
            decision: decision_tx,
        })
        .await;
    if announced.is_err() {
        return; // the engine is stopping
    }
    let answer = match decision.await {
        Ok(Ok(config)) => ToPool::Welcome {
            proof: uep_proof,
            config,
        },
        Ok(Err(reason)) => {
            tracing::warn!(%peer, block, reason, "refused an authenticated worker pool");
            ToPool::Refused { reason }
        }
        Err(_) => return,
    };
    let welcomed = matches!(answer, ToPool::Welcome { .. });
    if let Err(e) = write_frame(&mut stream, &answer).await {
        if welcomed {
            let _ = engine
                .send(PoolEvent::Disconnected {
                    block,
                    reason: format!("could not send the welcome: {e}"),
                })
                .await;
        }
        return;
    }
    if !welcomed {
        return;
    }

    let (mut read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(message) = to_pool.recv().await {
            if let Err(e) = write_frame(&mut write_half, &message).await {
                return format!("cannot write to the pool: {e}");
            }
        }
        "the engine closed the connection".to_owned()
    });
    let reason = loop {
        let frame = tokio::time::timeout(
            limits::SILENCE_LIMIT,
            read_frame::<_, FromPool>(&mut read_half, limits::MAX_FRAME),
        )
        .await;
        match frame {
            Ok(Ok(Some(message))) => {
                if engine
                    .send(PoolEvent::Message { block, message })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Ok(None)) => break "the pool closed its connection".to_owned(),
            Ok(Err(e)) => break e.to_string(),
            Err(_) => {
                break format!(
                    "the pool sent nothing for {} s",
                    limits::SILENCE_LIMIT.as_secs()
                );
            }
        }
    };
    writer.abort();
    let _ = engine.send(PoolEvent::Disconnected { block, reason }).await;
}

/// Challenge, hello, verify. Returns the block the peer proved itself for and the UEP's
/// proof for the welcome.
async fn authenticate(
    stream: &mut TcpStream,
    identity: &Identity,
) -> Result<(BlockId, String), String> {
    let uep_nonce = nonce().map_err(|e| format!("no randomness: {e}"))?;
    let challenge = ToPool::Challenge {
        protocol: PROTOCOL_VERSION,
        uep_id: identity.uep_id,
        nonce: uep_nonce.clone(),
    };
    write_frame(stream, &challenge)
        .await
        .map_err(|e| format!("cannot send the challenge: {e}"))?;
    let hello = read_frame::<_, FromPool>(stream, limits::MAX_HANDSHAKE_FRAME)
        .await
        .map_err(|e| format!("no valid hello: {e}"))?;
    let Some(FromPool::Hello {
        protocol,
        block,
        nonce: pool_nonce,
        proof,
    }) = hello
    else {
        return Err("the peer did not answer the challenge with a hello".into());
    };
    if protocol != PROTOCOL_VERSION {
        return Err(format!(
            "the pool speaks pool protocol {protocol}, this UEP {PROTOCOL_VERSION}; \
             gantry-pool and gantry-endpoint must come from the same release"
        ));
    }
    let transcript = Transcript {
        uep_id: identity.uep_id,
        block,
        uep_nonce: &uep_nonce,
        pool_nonce: &pool_nonce,
    };
    if !identity.secret.verify(Role::Pool, &transcript, &proof) {
        return Err(format!(
            "authentication failed: wrong proof of the UEP's secret (claimed block {block})"
        ));
    }
    Ok((block, identity.secret.prove(Role::Uep, &transcript)))
}
