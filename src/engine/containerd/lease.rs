//! Leases: what requests made under one write (blobs, snapshots) is kept from
//! containerd's garbage collector until the lease is deleted or expires.

use std::time::{Duration, SystemTime};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use containerd_client::tonic::Code;

use super::{metadata, unique_suffix, Containerd, ContainerdError};

/// Lease label that lets containerd's garbage collector drop a lease whose holder
/// died before releasing it (RFC 3339 time).
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

impl Containerd {
    /// A handle whose requests all hold a new lease, which keeps what they write
    /// (blobs, snapshots) from containerd's garbage collector until
    /// [`Containerd::release`] or `expire` from now (if the holder dies first).
    /// Write an image's layers and import it through one such handle.
    pub async fn leased(&self, expire: Duration) -> Result<Containerd, ContainerdError> {
        let id = format!("p2pimg-{}", unique_suffix());
        let until = SystemTime::now() + expire;
        let labels = [(LEASE_EXPIRE_LABEL.to_string(), rfc3339(until))].into();
        let req = self.request(CreateRequest {
            id: id.clone(),
            labels,
        });
        self.call(
            "create a lease",
            LeasesClient::new(self.channel.clone()).create(req),
        )
        .await?;
        let mut leased = self.clone();
        leased.lease = metadata(&id);
        Ok(leased)
    }

    /// Deletes the lease this handle holds (see [`Containerd::leased`]); what it
    /// protected stays only if an image refers to it. A no-op without a lease.
    pub async fn release(&self) -> Result<(), ContainerdError> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        let id = lease.to_str().unwrap_or_default().to_string();
        let req = self.request(DeleteRequest { id, sync: false });
        let mut client = LeasesClient::new(self.channel.clone());
        match self.call("delete a lease", client.delete(req)).await {
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// `t` as an RFC 3339 UTC time, such as `2026-12-03T15:20:00Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// The Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199); // leap year
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }
}
