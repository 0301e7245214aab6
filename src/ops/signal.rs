//! SIGINT and SIGTERM as something to wait for. Handlers are installed
//! when [`Signals`] is made, so a signal that comes a moment later is not
//! lost, and the process is not killed outright: the agent stops cleanly,
//! and a push or a bundle being made cleans up and exits 130 or 143, as a
//! shell reports a process killed by either.

use std::io;

use tokio::signal::unix::{signal, SignalKind};

/// Which stop signal arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, systemd stopping the unit).
    Terminate,
}

impl Stop {
    /// The exit status a shell shows for a process ended by this signal
    /// (128 + its number): 130 for SIGINT, 143 for SIGTERM.
    pub fn exit_code(self) -> u8 {
        match self {
            Stop::Interrupt => 130,
            Stop::Terminate => 143,
        }
    }

    /// The signal's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
        }
    }
}

/// The installed handlers of SIGINT and SIGTERM. Must be made inside a
/// tokio runtime.
#[derive(Debug)]
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs both handlers; from now on neither signal kills the process.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> Stop {
        tokio::select! {
            _ = self.int.recv() => Stop::Interrupt,
            _ = self.term.recv() => Stop::Terminate,
        }
    }
}
