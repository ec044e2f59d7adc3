//! The pool's side of its connection to the UEP: connect, authenticate both ways, then
//! hand the loop a pair of channels (a reader task and a writer task own the socket, so
//! the loop never waits on the network while it has workers to look after).

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::PoolArgs;
use crate::auth::{Role, Secret, Transcript, nonce};
use crate::limits;
use crate::wire::{FromPool, PROTOCOL_VERSION, PoolConfig, ToPool, read_frame, write_frame};

/// An authenticated connection to the UEP.
pub(super) struct Link {
    pub config: PoolConfig,
    /// What the UEP sends; closes when the connection ends or falls silent.
    pub incoming: mpsc::Receiver<ToPool>,
    /// What to send.
    pub outgoing: mpsc::Sender<FromPool>,
    /// Finishes once everything sent so far is written (after `outgoing` is dropped).
    pub writer: JoinHandle<()>,
}

/// Connects, retrying for [`limits::POOL_CONNECT`]: in a batch job the UEP may be briefly
/// unreachable while the node's network comes up.
async fn connect(address: &str) -> Result<TcpStream, String> {
    let deadline = tokio::time::Instant::now() + limits::POOL_CONNECT;
    loop {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "cannot connect to the UEP at {address} (tried for {} s): {e}",
                    limits::POOL_CONNECT.as_secs()
                ));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

/// Connects to the UEP and runs the handshake.
pub(super) async fn establish(args: &PoolArgs, secret: &Secret) -> Result<Link, String> {
    let mut stream = connect(&args.uep).await?;
    let _ = stream.set_nodelay(true);
    let config = tokio::time::timeout(
        limits::HANDSHAKE_TIMEOUT,
        handshake(&mut stream, args, secret),
    )
    .await
    .map_err(|_| {
        format!(
            "the UEP at {} did not complete the handshake within {} s",
            args.uep,
            limits::HANDSHAKE_TIMEOUT.as_secs()
        )
    })??;

    let (mut read_half, mut write_half) = stream.into_split();
    let (incoming_tx, incoming) = mpsc::channel(limits::CONNECTION_QUEUE_SPARE);
    tokio::spawn(async move {
        loop {
            let frame = tokio::time::timeout(
                limits::SILENCE_LIMIT,
                read_frame::<_, ToPool>(&mut read_half, limits::MAX_FRAME),
            )
            .await;
            let message = match frame {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => {
                    tracing::info!("the UEP closed the connection");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the connection to the UEP broke");
                    return;
                }
                Err(_) => {
                    tracing::error!(
                        silent_s = limits::SILENCE_LIMIT.as_secs(),
                        "the UEP fell silent"
                    );
                    return;
                }
            };
            if incoming_tx.send(message).await.is_err() {
                return;
            }
        }
    });
    let (outgoing, mut outgoing_rx) = mpsc::channel::<FromPool>(limits::CONNECTION_QUEUE_SPARE);
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing_rx.recv().await {
            if let Err(e) = write_frame(&mut write_half, &message).await {
                tracing::error!(error = %e, "cannot write to the UEP");
                return;
            }
        }
    });
    Ok(Link {
        config,
        incoming,
        outgoing,
        writer,
    })
}

async fn handshake(
    stream: &mut TcpStream,
    args: &PoolArgs,
    secret: &Secret,
) -> Result<PoolConfig, String> {
    let challenge = read_frame::<_, ToPool>(stream, limits::MAX_HANDSHAKE_FRAME)
        .await
        .map_err(|e| format!("no challenge from the UEP: {e}"))?;
    let (protocol, uep_id, uep_nonce) = match challenge {
        Some(ToPool::Challenge {
            protocol,
            uep_id,
            nonce,
        }) => (protocol, uep_id, nonce),
        Some(other) => return Err(format!("the UEP sent {other:?} instead of a challenge")),
        None => return Err("the UEP closed the connection before its challenge".into()),
    };
    if protocol != PROTOCOL_VERSION {
        return Err(format!(
            "the UEP speaks pool protocol {protocol}, this pool {PROTOCOL_VERSION}; \
             gantry-pool and gantry-endpoint must come from the same release"
        ));
    }
    if uep_id != args.uep_id {
        return Err(format!(
            "{} is UEP {uep_id}, not this pool's UEP {}",
            args.uep, args.uep_id
        ));
    }
    let pool_nonce = nonce().map_err(|e| format!("no randomness for a nonce: {e}"))?;
    let transcript = Transcript {
        uep_id,
        block: args.block,
        uep_nonce: &uep_nonce,
        pool_nonce: &pool_nonce,
    };
    let hello = FromPool::Hello {
        protocol: PROTOCOL_VERSION,
        block: args.block,
        nonce: pool_nonce.clone(),
        proof: secret.prove(Role::Pool, &transcript),
    };
    write_frame(stream, &hello)
        .await
        .map_err(|e| format!("cannot greet the UEP: {e}"))?;
    match read_frame::<_, ToPool>(stream, limits::MAX_HANDSHAKE_FRAME).await {
        Ok(Some(ToPool::Welcome { proof, config })) => {
            if secret.verify(Role::Uep, &transcript, &proof) {
                Ok(config)
            } else {
                Err(format!(
                    "the peer at {} does not hold the UEP's secret; refusing to run its tasks",
                    args.uep
                ))
            }
        }
        Ok(Some(ToPool::Refused { reason })) => Err(format!("the UEP refused this pool: {reason}")),
        Ok(Some(other)) => Err(format!("the UEP sent {other:?} instead of a welcome")),
        Ok(None) => Err("the UEP closed the connection during the handshake".into()),
        Err(e) => Err(format!("no welcome from the UEP: {e}")),
    }
}
