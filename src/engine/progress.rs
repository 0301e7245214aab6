//! Reading `POST /images/load` progress: which messages in the stream are
//! failures, including the ones an engine only prints.
//!
//! dockerd 20.10 reports a failed load as a final `{"errorDetail":{…},
//! "error":"…"}` line with HTTP status 200, because the response has already
//! started. The containerd image store (Docker 25+) additionally reports some
//! unpack failures only as text in `stream`/`status` lines; those are treated
//! as errors too, so a load that did not produce an image never looks fine.

use bollard::models::BuildInfo;

/// Text that marks a printed-only unpack failure on the containerd store.
const UNPACK_FAILURE: &str = "failed to unpack";

/// The failure a progress message reports, if it reports one.
pub fn progress_error(info: &BuildInfo) -> Option<String> {
    if let Some(message) = detail_message(info) {
        return Some(message);
    }
    if let Some(error) = info.error.as_deref().filter(|e| !e.trim().is_empty()) {
        return Some(error.trim().to_string());
    }
    [info.stream.as_deref(), info.status.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|text| is_printed_failure(text))
        .map(str::to_string)
}

/// A progress line's text, for logs: the `stream` or `status` message.
pub fn progress_text(info: &BuildInfo) -> Option<&str> {
    info.stream
        .as_deref()
        .or(info.status.as_deref())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn detail_message(info: &BuildInfo) -> Option<String> {
    let detail = info.error_detail.as_ref()?;
    let message = detail.message.as_deref()?.trim();
    (!message.is_empty()).then(|| message.to_string())
}

/// Whether a printed line is a failure: it starts with "Error" or mentions
/// an unpack failure.
fn is_printed_failure(text: &str) -> bool {
    text.starts_with("Error") || text.to_ascii_lowercase().contains(UNPACK_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ErrorDetail;

    fn parse(line: &str) -> BuildInfo {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn error_detail_wins() {
        // The exact shape dockerd 20.10 sends when `docker load` fails.
        let info = parse(r#"{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}"#);
        assert_eq!(progress_error(&info).as_deref(), Some("unexpected EOF"));
    }

    #[test]
    fn bare_error_field_counts() {
        let info = BuildInfo {
            error: Some("open /x/layer.tar: no such file or directory".into()),
            error_detail: Some(ErrorDetail::default()),
            ..Default::default()
        };
        assert!(progress_error(&info).unwrap().contains("layer.tar"));
    }

    #[test]
    fn printed_containerd_failures_count() {
        for line in [
            r#"{"stream":"Error: failed to unpack image on snapshotter overlayfs\n"}"#,
            r#"{"status":"unpacking app:1.4: Failed to unpack layer sha256:ab"}"#,
        ] {
            assert!(progress_error(&parse(line)).is_some(), "{line} not an error");
        }
    }

    #[test]
    fn normal_progress_is_not_an_error() {
        for line in [
            r#"{"stream":"Loaded image: app:1.4\n"}"#,
            r#"{"stream":"Loaded image ID: sha256:0123\n"}"#,
            r#"{"status":"Loading layer","progressDetail":{"current":512,"total":1024},"id":"ab"}"#,
        ] {
            assert_eq!(progress_error(&parse(line)), None, "{line}");
        }
        assert_eq!(
            progress_text(&parse(r#"{"stream":"Loaded image: app:1.4\n"}"#)),
            Some("Loaded image: app:1.4")
        );
    }
}
