//! Finding the peer again after the path broke: a meeting point on the
//! rendezvous server derived from the pairing key, fresh candidates, a
//! fresh race.

use std::time::Instant;

use ferry_proto::pairing::SecureChannel;
use ferry_rendezvous::SignalEvent;
use tracing::debug;

use crate::*;

/// What both sides keep after pairing so that they can reconnect when the
/// path breaks mid-transfer, without the code (its nameplate is released
/// by then) and without asking the user: they meet again on a channel
/// derived from the pairing key, exchange fresh candidates sealed with
/// that key, and race the paths afresh (the relay included, with a fresh
/// token).
pub struct Rejoin {
    server: String,
    channel: SecureChannel,
    meeting: String,
    controlling: bool,
    options: SessionOptions,
}

impl std::fmt::Debug for Rejoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejoin")
            .field("server", &self.server)
            .field("controlling", &self.controlling)
            .finish_non_exhaustive()
    }
}

impl Rejoin {
    pub(crate) fn new(
        server: &str,
        channel: SecureChannel,
        controlling: bool,
        options: SessionOptions,
    ) -> Self {
        let secret = channel.derive_secret(REJOIN_CONTEXT);
        Rejoin {
            server: server.to_string(),
            meeting: hex::encode(&secret[..16]),
            channel,
            controlling,
            options,
        }
    }

    /// Meets the peer again through the rendezvous server (waiting up to
    /// [`REJOIN_WAIT`] for it) and races the paths afresh. One attempt: the
    /// caller decides how often to try, and how long to back off.
    pub async fn reconnect(&mut self) -> Result<PeerLink, SessionError> {
        let (mut signal, welcome) = connect_signal(&self.server, self.options.proxy).await?;
        let gathering = start_gathering(&welcome, &self.server, true, !self.options.no_upnp);
        if !signal.rejoin(&self.meeting).await? {
            let joined = async {
                loop {
                    match signal.recv().await? {
                        SignalEvent::PeerJoined => return Ok(()),
                        other => debug!(?other, "while waiting for the peer to rejoin"),
                    }
                }
            };
            match tokio::time::timeout(REJOIN_WAIT, joined).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    gathering.abort();
                    return Err(SessionError::Signal(error));
                }
                Err(_) => {
                    gathering.abort();
                    let _ = signal.release(None).await;
                    return Err(SessionError::PeerGone(PeerGone::DidNotComeBack(
                        REJOIN_WAIT,
                    )));
                }
            }
        }
        let started = Instant::now();
        run_session(
            &self.server,
            signal,
            &mut self.channel,
            welcome,
            gathering,
            self.options,
            self.controlling,
            started,
            false,
        )
        .await
    }
}
