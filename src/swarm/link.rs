//! One peer's swarm stream: sends our HELLO and HAVEs, reads theirs.

use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::handle::Cmd;
use super::*;
use crate::content::hash::Hash;
use crate::swarm::policy::picker::PeerId;
use crate::wire::{self, read_frame, write_frame, Message};

/// One peer's swarm stream: sends our HELLO and HAVEs, reads theirs.
pub(super) struct LinkTask {
    pub(super) id: PeerId,
    pub(super) dist: Hash,
    pub(super) chunks: usize,
    pub(super) tx: mpsc::WeakSender<Cmd>,
}

impl LinkTask {
    pub(super) async fn run(
        self,
        mut send: SendStream,
        mut recv: RecvStream,
        ours: Holdings,
        their: Option<Holdings>,
        mut haves: mpsc::UnboundedReceiver<u32>,
    ) {
        // HAVEs must not wait behind chunk answers on the same connection.
        let _ = send.set_priority(CONTROL_PRIORITY);
        let result = self.exchange(&mut send, &mut recv, ours, their, &mut haves).await;
        if let Err(e) = result {
            tracing::debug!(dist = %self.dist.short(), "peer link ended: {e}");
        }
        self.tell(Cmd::Gone { id: self.id }).await;
    }

    async fn exchange(
        &self,
        send: &mut (impl AsyncWrite + Unpin),
        recv: &mut (impl AsyncRead + Unpin),
        ours: Holdings,
        their: Option<Holdings>,
        haves: &mut mpsc::UnboundedReceiver<u32>,
    ) -> Result<(), wire::FrameError> {
        let hello = Message::Hello {
            dist: self.dist,
            have: ours.have,
            want: ours.want,
        };
        write_frame(send, &hello).await?;
        let their = match their {
            Some(their) => their,
            None => match read_frame(recv, wire::MAX_FIRST_FRAME).await? {
                Message::Hello { dist, have, want } if dist == self.dist => Holdings { have, want },
                other => {
                    tracing::warn!(dist = %self.dist.short(), "peer answered the swarm link with {other:?}");
                    return Ok(());
                }
            },
        };
        if !their.have.fits(self.chunks) || !their.want.fits(self.chunks) {
            return Ok(());
        }
        self.tell(Cmd::Hello { id: self.id, their }).await;
        // Reading and writing run as two whole loops raced against each other,
        // never a frame read inside a select!: a read cancelled mid-frame
        // would leave the stream in the middle of a frame.
        let reader = async {
            loop {
                match read_frame(recv, wire::MAX_LINK_FRAME).await? {
                    Message::Have { index } => self.tell(Cmd::Have { id: self.id, index }).await,
                    _ => return Ok(()),
                }
            }
        };
        let writer = async {
            while let Some(index) = haves.recv().await {
                write_frame(send, &Message::Have { index }).await?;
            }
            Ok(())
        };
        tokio::select! {
            r = reader => r,
            w = writer => w,
        }
    }

    async fn tell(&self, cmd: Cmd) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.send(cmd).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::wire::encode;
    use crate::wire::Bitfield;

    /// Regression: the link raced a frame read against outgoing HAVEs in one
    /// `select!`, so a read cancelled mid-frame desynchronised the stream.
    /// Here every incoming frame arrives a byte at a time while HAVEs go out.
    #[tokio::test]
    async fn link_survives_frames_split_while_haves_go_out() {
        let dist = Hash::of(b"dist");
        let (tx, mut rx) = mpsc::channel(1024);
        let link = LinkTask {
            id: 7,
            dist,
            chunks: 64,
            tx: tx.downgrade(),
        };
        let (mut ours, mut theirs) = (tokio::io::duplex(1 << 16), tokio::io::duplex(1 << 16));
        let (haves_tx, mut haves_rx) = mpsc::unbounded_channel();
        let holdings = Holdings {
            have: Bitfield::new(64),
            want: Bitfield::new(64),
        };
        let task = tokio::spawn(async move {
            let _ = link
                .exchange(&mut ours.0, &mut theirs.0, holdings.clone(), None, &mut haves_rx)
                .await;
        });
        let peer_hello = Message::Hello {
            dist,
            have: Bitfield::new(64),
            want: Bitfield::new(64),
        };
        let mut incoming = encode(&peer_hello);
        (0..64).for_each(|i| incoming.extend(encode(&Message::Have { index: i })));
        for byte in incoming {
            theirs.1.write_all(&[byte]).await.unwrap();
            let _ = haves_tx.send(1);
            tokio::task::yield_now().await;
        }
        let mut got = Vec::new();
        while got.len() < 64 {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Cmd::Have { index, .. } => got.push(index),
                Cmd::Hello { .. } => {}
                other => panic!("link ended early: {other:?}"),
            }
        }
        assert_eq!(got, (0..64).collect::<Vec<_>>());
        drop(haves_tx);
        task.await.unwrap();
        drop(ours.1);
    }
}
