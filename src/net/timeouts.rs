//! [`Timeouts`]: every limit that decides when a peer counts as gone, in one
//! place, the way quinn-proto's `TransportConfig` holds QUIC's. The product
//! runs with [`Timeouts::default`]; tests shorten them instead of waiting
//! them out, through the library (the pusher and the agent take them as an
//! argument) or, for the built binary, through [`TEST_ENV`], which only the
//! command line reads ([`Timeouts::from_test_env`]).

use std::time::Duration;

/// The environment variable through which tests shorten the timeouts of a
/// `p2pimg` binary they run: `connect=1000,idle=4000` (milliseconds, any of
/// the field names of [`Timeouts`]). For tests only: in no `--help`, and
/// honouring it logs a warning.
pub const TEST_ENV: &str = "P2PIMG_TEST_TIMEOUTS";

/// How long the network waits before a peer counts as gone. Passed to the
/// endpoint (`connect`, `keep_alive`, `idle`), the pusher's sessions
/// (`reach`, `stall`) and seed (`seed_stall`), and the agent (`stall`, with
/// the pusher gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a dial may take. Default 10 s: ample for a handshake across
    /// a LAN or WAN (a few RTTs), short enough that a push to a dead node
    /// reports it quickly.
    pub connect: Duration,
    /// Keep-alive interval. Default 5 s: well under `idle` and under typical
    /// 30 s NAT/conntrack UDP timeouts, so an idle but healthy connection
    /// between agents stays open.
    pub keep_alive: Duration,
    /// QUIC's idle timeout: a peer silent for this long is gone. Default
    /// 30 s (6 missed keep-alives).
    pub idle: Duration,
    /// How long the pusher dials again a node that does not answer before it
    /// fails it. Default 30 s: a link down for a moment (a switch reboot, a
    /// flapping port) comes back within it, and it matches `idle`, the time
    /// a node cut off mid-transfer has to come back.
    pub reach: Duration,
    /// A fetching node that reports no progress for this long is failed by
    /// the pusher; a node whose pusher went away gives up after as long
    /// without a new chunk from its peers. Default 180 s: one 1 MiB chunk
    /// takes 8 s even at 1 Mbit/s, and the swarm's fetch timeout (60 s)
    /// moves a stuck request to another peer well before.
    pub stall: Duration,
    /// How long the seed lets a node go without a verified chunk, with
    /// nothing offered outstanding, before it offers the node chunks others
    /// hold or were offered. Default 8 s: a scheduling choice of the seed
    /// (the swarm policy's `STALL_AFTER`, which says why), but one that only
    /// works while it stays under `idle`: when a node's link dies with chunks
    /// offered to it, the healthy nodes needing them wait this long, not the
    /// idle timeout. So it is here, to be shortened along with `idle`.
    pub seed_stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            keep_alive: Duration::from_secs(5),
            idle: Duration::from_secs(30),
            reach: Duration::from_secs(30),
            stall: Duration::from_secs(180),
            seed_stall: Duration::from_secs(8),
        }
    }
}

impl Timeouts {
    /// The defaults with what [`TEST_ENV`] sets, logged as a warning: how
    /// the tests shorten the timeouts of the built binary (the suite runs a
    /// release build). Read once, by the command line, where it starts a
    /// push or an agent; nothing below it reads the environment.
    ///
    /// # Panics
    /// When [`TEST_ENV`] is set but malformed: a test that meant to shorten
    /// the timeouts must not silently wait them out.
    pub fn from_test_env() -> Timeouts {
        let Ok(spec) = std::env::var(TEST_ENV) else {
            return Timeouts::default();
        };
        let timeouts = Timeouts::default()
            .with(&spec)
            .unwrap_or_else(|e| panic!("{TEST_ENV}={spec:?}: {e}"));
        tracing::warn!("timeouts shortened for tests ({TEST_ENV}): {timeouts:?}");
        timeouts
    }

    /// These timeouts with the ones `spec` sets: `name=millis`, comma-separated.
    pub fn with(mut self, spec: &str) -> Result<Timeouts, String> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, ms) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not name=milliseconds"))?;
            let ms: u64 = ms
                .trim()
                .parse()
                .map_err(|e| format!("{item:?}: {e} (milliseconds, a whole number)"))?;
            *self.field(name.trim())? = Duration::from_millis(ms);
        }
        self.check()?;
        Ok(self)
    }

    fn field(&mut self, name: &str) -> Result<&mut Duration, String> {
        Ok(match name {
            "connect" => &mut self.connect,
            "keep_alive" => &mut self.keep_alive,
            "idle" => &mut self.idle,
            "reach" => &mut self.reach,
            "stall" => &mut self.stall,
            "seed_stall" => &mut self.seed_stall,
            other => return Err(format!("no timeout named {other:?}")),
        })
    }

    /// A keep-alive no shorter than the idle timeout would let a healthy
    /// but quiet connection time out.
    fn check(&self) -> Result<(), String> {
        if self.keep_alive >= self.idle || self.connect.is_zero() {
            return Err(format!(
                "keep_alive must be under idle and connect above zero: {self:?}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_overrides_only_what_it_names() {
        let t = Timeouts::default()
            .with("keep_alive=1000,idle=4000, reach=2500")
            .unwrap();
        let expected = Timeouts {
            keep_alive: Duration::from_secs(1),
            idle: Duration::from_secs(4),
            reach: Duration::from_millis(2500),
            ..Timeouts::default()
        };
        assert_eq!(t, expected);
    }

    #[test]
    fn a_malformed_spec_is_refused() {
        for spec in ["idle", "idle=4s", "linger=1", "keep_alive=30000"] {
            assert!(Timeouts::default().with(spec).is_err(), "{spec}");
        }
    }

    #[test]
    fn the_defaults_are_the_products() {
        let t = Timeouts::default();
        let all = [t.connect, t.keep_alive, t.idle, t.reach, t.stall, t.seed_stall];
        assert_eq!(all.map(|d| d.as_secs()), [10, 5, 30, 30, 180, 8]);
    }
}
