//! [`Trickle`]: an in-memory `AsyncRead` that hands out a few bytes per read
//! and alternates with "not ready", so decoders meet partial reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes delivered a piece at a time.
pub struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    /// Most bytes one read returns.
    step: usize,
    /// Whether reads alternate with `Pending`.
    stall: bool,
    stalled: bool,
}

impl<'a> Trickle<'a> {
    /// `mode`'s low 3 bits are the piece size (0: everything at once), bit 3
    /// makes every other poll return `Pending` (waking at once).
    pub fn new(data: &'a [u8], mode: u8) -> Self {
        let step = match mode & 7 {
            0 => usize::MAX,
            n => usize::from(n),
        };
        Trickle {
            data,
            pos: 0,
            step,
            stall: mode & 8 != 0,
            stalled: false,
        }
    }

    /// Bytes handed out so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stall {
            self.stalled = !self.stalled;
            if self.stalled {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let rest = &self.data[self.pos..];
        let n = rest.len().min(self.step).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}
